#!/usr/bin/env bash
# Train the demo model shipped as dalle_pytorch/demo/dalle.safetensors, with this package's own
# scripts, on the synthetic coloured-shapes dataset. Measured: 15 minutes on 2 CPU cores
# (VAE 2 min, DALLE 13 min; single-threaded, see OMP_NUM_THREADS below).
#
#   bash scripts/train_demo.sh            # work files in runs/demo (must not exist yet)
#   WORK=/tmp/demo bash scripts/train_demo.sh
#
# Steps: 6000 captioned 32x32 images -> a word-level tokenizer over the caption words ->
# train_vae.py (8x8 codes) -> train_dalle.py -> copy the DALLE (VAE and tokenizer inside) and the
# tokenizer JSON into dalle_pytorch/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-runs/demo}"
DEMO=dalle_pytorch/demo
if [ -e "$WORK" ]; then
    echo "error: $WORK exists; remove it or set WORK=another/folder" >&2
    exit 1
fi
mkdir -p "$WORK" "$DEMO"
# The models are tiny: one thread per matmul is nearly as fast as two, and does not slow down
# badly when other processes share the cores. Override with OMP_NUM_THREADS=2.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SECONDS=0

# 1. data: 6000 images, every (shape, colour, background) combination about equally often;
#    each caption file holds "a red circle on a blue background" and "red circle, blue background"
python -c "from dalle_pytorch.synthetic import make_dataset; make_dataset('$WORK/data', 6000, image_size=32, seed=0)"

# 2. tokenizer: one token per caption word ([PAD] = 0, as the models expect), lowercased
python - "$DEMO/tokenizer.json" <<'PY'
import sys
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from dalle_pytorch.synthetic import COLORS, SHAPES

words = ["[PAD]", "[UNK]", "a", "on", "background", ","] + list(COLORS) + list(SHAPES)
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.add_special_tokens(["[PAD]", "[UNK]"])
tok.save(sys.argv[1])
PY

# 3. the VAE: 32x32 -> 8x8 codes out of 128, hard (straight-through) codes
python train_vae.py --image_folder "$WORK/data" --image_size 32 --num_layers 2 --num_tokens 128 \
    --emb_dim 32 --hidden_dim 32 --num_resnet_blocks 1 --straight_through \
    --batch_size 32 --learning_rate 1e-3 --max_steps 1500 --seed 0 \
    --output_dir "$WORK/vae" --save_every_steps 500 --sample_every 500 --log_every 100 --no_progress
echo "VAE done after $SECONDS s"

# 4. DALLE: 8 caption tokens + 64 image codes, 10% of captions dropped (classifier-free guidance),
#    token shift and rotary embeddings (off by default, as in DALLE-pytorch's train_dalle.py)
python train_dalle.py --vae_path "$WORK/vae/vae.safetensors" --image_text_folder "$WORK/data" \
    --bpe_path "$DEMO/tokenizer.json" --hug --text_seq_len 8 \
    --dim 96 --depth 4 --heads 3 --dim_head 32 --shift_tokens --rotary_emb --null_cond_prob 0.1 --resize_ratio 1.0 \
    --batch_size 32 --learning_rate 1e-3 --warmup_steps 100 --lr_schedule cosine --max_steps 3000 --seed 0 \
    --sample_caption "a red circle on a blue background" \
    --output_dir "$WORK/dalle" --save_every_steps 500 --sample_every 500 --log_every 100 --no_progress
echo "DALLE done after $SECONDS s"

cp "$WORK/dalle/dalle.safetensors" "$DEMO/dalle.safetensors"
echo "demo model: $DEMO/dalle.safetensors ($(stat -c %s "$DEMO/dalle.safetensors") bytes); total $SECONDS s" | tee "$WORK/timing.txt"
