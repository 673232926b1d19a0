"""Floor 2, sampling: `SamplingConfig` and `sample` (filters, guidance, Gumbel-max), and the one
decode loop (`decode`: prefill, the cached steps, priming, masked completion, guidance rows, the
compile cache, progress) that `DALLE.generate_images`, the pipeline and the server share.

It drives a model through its step interface (`setup_cache`, `prefill`, `step`, ...) and imports
no model class, so the model's own methods can call it.  Nothing is imported here.
"""
