from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path(__file__).with_name("dalle_pytorch").joinpath("version.py").read_text(), version)

setup(
    # not "dalle-pytorch": that is lucidrains' project on PyPI; the import name stays dalle_pytorch
    name="dalle-torch",
    version=version["__version__"],
    description="DALL-E in PyTorch: discrete VAE + transformer, with exact and fast cached inference",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]),
    package_data={"dalle_pytorch": ["data/*.txt.gz", "data/LICENSE-CLIP-BPE", "demo/*.safetensors", "demo/*.json", "demo/*.md",
                                    "serve/static/*.html", "serve/static/*.js", "serve/static/*.css"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",
        "einops>=0.6",
        "pillow",
        "tqdm",
        "safetensors>=0.4",
        "numpy",  # safetensors.torch needs it to serialise
        "tokenizers",
        "regex",
        "ftfy",
    ],
    extras_require={
        # webdataset: the --wds tests use the real package; transformers: BertTokenizer, the ChineseTokenizer oracle;
        # matplotlib: training curves (the plot extra);
        # pyyaml: the oracle of the taming-config reader; attrs, requests: what the dall-e oracle imports. The
        # oracles taming-transformers-rom1504==0.0.6 and dall-e==0.1 are NOT listed: their requirements
        # (torchvision, pytorch-lightning, an unpinned torch) would replace torch; .ci/run installs them --no-deps.
        # fastapi/uvicorn/httpx: the server tests; playwright: the page in headless Chromium (Debian's chromium);
    # openai: the official client against POST /v1/images/generations; prometheus-client: the parser of /metrics.
        # open_clip_torch==3.3.0 and torchvision==0.28.0, the reranking oracles, are installed --no-deps by .ci/run too
        # (what they import, regex, ftfy, tqdm, safetensors, numpy, pillow, is already required)
        "test": ["pytest", "hypothesis", "webdataset", "transformers", "pyyaml", "attrs", "requests", "matplotlib",
                 "fastapi", "uvicorn", "httpx", "playwright", "openai", "prometheus-client"],
        "serve": ["fastapi", "uvicorn"],
        "webdataset": ["webdataset"],
        "wandb": ["wandb"],
        "tensorboard": ["tensorboard"],
        "plot": ["matplotlib"],  # curves.png of a training run (dalle-plot)
        # generate.py --clip_model: rerank with a pretrained OpenCLIP / OpenAI CLIP. open_clip requires torchvision:
        # install the torchvision release that matches your torch (an unpinned one may replace torch)
        "clip": ["open_clip_torch"],
    },
    entry_points={"console_scripts": [
        "dalle-generate=dalle_pytorch.cli.generate:cli",
        "dalle-train=dalle_pytorch.cli.train_dalle:cli",
        "dalle-train-vae=dalle_pytorch.cli.train_vae:cli",
        "dalle-convert=dalle_pytorch.cli.convert:main",
        "dalle-plot=dalle_pytorch.cli.plot:main",
        "dalle-encode=dalle_pytorch.cli.encode:cli",
        "dalle-serve=dalle_pytorch.cli.serve:main",
    ]},
)
