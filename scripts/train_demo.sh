#!/usr/bin/env bash
# Trains the demo model shipped in dalle_pytorch/demo/ with the package's own scripts, on a CPU.
# Measured on the project's 2-core machine: VAE ~7 min, DALLE ~10 min (1500 steps each).
#   bash scripts/train_demo.sh [WORKDIR]     (default: ./demo_run)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-demo_run}"
mkdir -p "$work" && cd "$work"

# 1. data: 6000 coloured shapes, 32x32, captions like "a red circle on a blue background"
python -c "from dalle_pytorch.synthetic import make_dataset; make_dataset('data', 6000, image_size=32, seed=0)"

# 2. the tokenizer: a word-level vocabulary of the caption words (keeps the text embedding tiny)
python - <<'PY'
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from dalle_pytorch.synthetic import COLORS, SHAPES
words = ["[PAD]", "[UNK]", "a", "on", "background", ","] + list(COLORS) + list(SHAPES)
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.add_special_tokens(["[PAD]", "[UNK]"])
tok.save("tok.json")
PY

# 3. the VAE: 32x32 -> 8x8 codes out of 128
python "$repo/train_vae.py" --image_folder data --image_size 32 --num_tokens 128 --num_layers 2 \
  --num_resnet_blocks 1 --emb_dim 64 --hidden_dim 64 --straight_through --starting_temp 1.0 --temp_min 0.5 \
  --anneal_rate 1e-6 --max_steps 1500 --batch_size 32 --learning_rate 1e-3 --lr_decay_rate 0.98 \
  --seed 42 --output_dir vae_a --save_every_steps 250 --sample_every 500 --log_every 100 --no_progress

# 4. the DALLE, with caption dropout so that guidance works
python "$repo/train_dalle.py" --vae_path vae_a/vae.safetensors --image_text_folder data --resize_ratio 1.0 \
  --hug --bpe_path tok.json --dim 128 --text_seq_len 8 --depth 4 --heads 4 --dim_head 32 \
  --null_cond_prob 0.1 --max_steps 1500 --batch_size 32 --learning_rate 1e-3 --clip_grad_norm 0.5 \
  --lr_schedule cosine --warmup_steps 100 --seed 42 --output_dir dalle_a --save_every_steps 250 \
  --sample_every 500 --log_every 50 --no_progress

cp dalle_a/dalle.safetensors "$repo/dalle_pytorch/demo/dalle.safetensors"
cp tok.json "$repo/dalle_pytorch/demo/tokenizer.json"
echo "demo model written to $repo/dalle_pytorch/demo/"
