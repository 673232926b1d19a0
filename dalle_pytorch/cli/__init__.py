"""Floor 7, the entry points: one module per tool, each a console script (setup.py) and a
`python -m dalle_pytorch.cli.<tool>`.  They parse flags, build the library's configs, call the
library and map its errors to the flags that caused them; the flag words live here and nowhere below.

    dalle-generate    generate.py      captions -> image folders
    dalle-train       train_dalle.py   train a DALLE
    dalle-train-vae   train_vae.py     train a DiscreteVAE
    dalle-convert     convert.py       a checkpoint (DALLE-pytorch's or ours) -> ours
    dalle-plot        plot.py          a run's training curves
    dalle-serve       serve.py         the HTTP server and its page

Shared by them: train_flags.py (the flags of both training scripts and `config_from_flags`, the one
way they become a `TrainConfig`) and messages.py (library messages with the flags they name, errors
and warnings as one line). The repository's generate.py, train_dalle.py and train_vae.py are
three-line wrappers around these, so DALLE-pytorch's command lines still run.  Nothing is imported here.
"""
