"""Constants shared by the tasks and the datamodules (neither imports the other, DESIGN.md §2)."""

#: Label of a token that is not predicted (LM padding); ``torch.nn.functional.cross_entropy``'s default.
IGNORE_INDEX = -100
