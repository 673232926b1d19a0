"""The former home of file formats and checkpoints (up to 2.0): now `dalle_pytorch.formats` (bytes),
`dalle_pytorch.checkpoint` (models from files) and `dalle_pytorch.pipeline.outputs` (generation's
files).  Only `dalle_pytorch.io.outputs`, a documented path, is kept."""
