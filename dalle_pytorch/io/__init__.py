"""File formats: our checkpoint format, DALLE-pytorch's files, training-state files, safe pickle
reading and atomic writes.

Nothing is imported here, so that model modules can use a reader of this package without loading
the others (the checkpoint modules import the models).
"""
