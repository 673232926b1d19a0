"""Floor 1, file-level readers and writers: regular files and atomic writes (`files`), image files
and PNGs (`images`), integrity digests, safe pickle reading (`safe_pickle`, `pt_files`), taming's
YAML configs (`taming_yaml`) and where DALLE-pytorch kept its pretrained files.

Bytes in, Python values and tensors out: nothing here builds a model.  Nothing is imported here.
"""
