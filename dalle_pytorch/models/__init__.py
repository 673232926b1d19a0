"""Floor 3, the models: `DALLEConfig` and the cache-aware `Transformer`, `DALLE`, the VAEs
(`DiscreteVAE`, `VQGanVAE` over taming's architecture, `OpenAIDiscreteVAE`), `CLIP` and the rerankers.

Single-device and side-effect free.  The pretrained VAEs read their files when they are built
(DALLE-pytorch's constructors take paths), through `dalle_pytorch.formats`.
Nothing is imported here: import the module you need.
"""
