"""Floor 1, the building blocks of the transformer: attention patterns (one static mask each),
`Attention`, rotary tables, token shift, the preallocated inference cache and the packed weights
of the CPU decode step.  Torch only; nothing here knows a model, a file or a flag.

Nothing is imported here: import the module you need.
"""
