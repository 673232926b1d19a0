"""Floor 5, captions to images: `Pipeline` (text_to_image.py: tokenize, sample in seeded batches,
rerank, previews) and the files a run writes (outputs.py: folders, PNGs, generation.json, index).

generate.py and the server both go through `Pipeline`; neither re-implements it.  The names of
text_to_image are re-exported here (`from dalle_pytorch.pipeline import Pipeline, demo_path`).
"""
from dalle_pytorch.pipeline.text_to_image import (DEMO, DTYPES, GeneratedImages, Pipeline, PipelineOutput, Step,
                                                  batch_seeds, demo_path, fresh_seed, generation_settings,
                                                  preview_images, resolve_checkpoint, resolve_device, resolve_dtype)

__all__ = ["DEMO", "DTYPES", "GeneratedImages", "Pipeline", "PipelineOutput", "Step", "batch_seeds", "demo_path",
           "fresh_seed", "generation_settings", "preview_images", "resolve_checkpoint", "resolve_device", "resolve_dtype"]
