"""Loss by position: does the LaCT memory keep helping beyond the attention window?"""
