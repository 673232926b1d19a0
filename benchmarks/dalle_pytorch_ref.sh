#!/usr/bin/env bash
# The reference for benchmarks/compare.py: DALLE-pytorch 1.6.6 in its own virtual environment,
# outside this repository, so that its `dalle_pytorch` never shadows ours.
#
#     bash benchmarks/dalle_pytorch_ref.sh [VENV]      # default VENV: /work/ref/venv-perf
#     python benchmarks/compare.py --ref_python VENV/bin/python
#
# What it installs, and why:
# - torch==2.13.0 first (the CPU wheel; an unpinned torch would pull a CUDA build);
# - dalle-pytorch==1.6.6 with --no-deps: most of its declared dependencies (taming-transformers,
#   transformers, DALL-E, youtokentome, webdataset, torchvision, tokenizers) serve its VQGAN/OpenAI
#   VAEs, tokenizers and data loaders, none of which a DALLE over its own DiscreteVAE uses;
# - the modules its generation path does import: einops, numpy, tqdm, pillow, packaging, requests,
#   pyyaml, and rotary-embedding-torch 0.1.5 / axial-positional-embedding 0.2.1 (the releases of
#   its time: 1.6.6 pins neither; later rotary-embedding-torch releases changed the API it calls);
# - stubs for what it imports at module level but never calls here: `taming.models.vqgan`
#   (VQModel, GumbelVQ: only VQGanVAE uses them), `omegaconf` (likewise) and `pkg_resources`
#   (setuptools >= 81 no longer ships it; dalle_pytorch/__init__.py imports get_distribution).
#   A stub raises if it is ever called, so a benchmark cannot silently run on one.
# The cache fix (DALLE-pytorch drops its cache at cond_scale 1) is applied at run time by
# benchmarks/dalle_pytorch_ref.py, not by editing the installed package. (python -P: the current
# directory, e.g. this repository, must not come first on sys.path.)
set -euo pipefail
VENV=${1:-/work/ref/venv-perf}
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q torch==2.13.0
"$PIP" install -q --no-deps dalle-pytorch==1.6.6 rotary-embedding-torch==0.1.5 axial-positional-embedding==0.2.1
"$PIP" install -q einops numpy tqdm pillow packaging requests pyyaml
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/taming/models"
cat > "$SITE/taming/__init__.py" <<'EOF'
"""Stub (benchmarks/dalle_pytorch_ref.sh): DALLE-pytorch imports taming only for its VQGanVAE."""
EOF
cp "$SITE/taming/__init__.py" "$SITE/taming/models/__init__.py"
cat > "$SITE/taming/models/vqgan.py" <<'EOF'
"""Stub (benchmarks/dalle_pytorch_ref.sh): not taming-transformers; only importable."""


class VQModel:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("taming is a stub in this environment (benchmarks/dalle_pytorch_ref.sh)")


GumbelVQ = VQModel
EOF
cat > "$SITE/omegaconf.py" <<'EOF'
"""Stub (benchmarks/dalle_pytorch_ref.sh): DALLE-pytorch's VQGanVAE is its only user."""


class OmegaConf:
    @staticmethod
    def load(*args, **kwargs):
        raise RuntimeError("omegaconf is a stub in this environment (benchmarks/dalle_pytorch_ref.sh)")
EOF
cat > "$SITE/pkg_resources.py" <<'EOF'
"""Stub (benchmarks/dalle_pytorch_ref.sh): DALLE-pytorch imports get_distribution at import time."""
from importlib.metadata import version as _version


class _Distribution:
    def __init__(self, name):
        self.project_name, self.version = name, _version(name)


def get_distribution(name):
    return _Distribution(name)
EOF
"$VENV/bin/python" -P -c "import dalle_pytorch, torch; print('dalle_pytorch', dalle_pytorch.__version__, 'torch', torch.__version__, 'from', dalle_pytorch.__file__)"
