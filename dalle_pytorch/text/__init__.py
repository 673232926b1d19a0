"""The tokenizers, one module each; `dalle_pytorch.text.factory` is the public module that gathers them
and holds the rules that choose and rebuild them. Nothing is imported here."""
