"""DALLE-pytorch 1.6.6's module paths, over this package (floor 8, beside the front door).

Code written against DALLE-pytorch imports `dalle_pytorch.dalle_pytorch`, `.vae`, `.tokenizer`,
`.loader` and `.distributed_utils`; each of those paths is a three-line module at the package root
that re-exports the matching module here, and these re-export ours under DALLE-pytorch's names.
Nothing of this package imports them.  docs/migrating.md lists what they map to and what differs.
Nothing is imported here: import the module you need.
"""
