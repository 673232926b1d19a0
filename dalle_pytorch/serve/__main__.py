"""`python -m dalle_pytorch.serve`: the server's entry point, `dalle_pytorch.cli.serve` (also `dalle-serve`)."""
import sys

from dalle_pytorch.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
