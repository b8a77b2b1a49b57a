"""State size: does a bigger fast-weight state use long context better?"""
