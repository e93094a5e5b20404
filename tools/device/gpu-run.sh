#!/usr/bin/env bash
# The GPU work of issue [gpu], in stages that each fit one device call (10 minutes at most).
# Runs THERE, after tools/device/unpack.py has installed the pieces (docs/gpu-setup.md):
#
#   bash tools/device/gpu-run.sh check       # versions, CUDA, imports (seconds)
#   bash tools/device/gpu-run.sh calibrate   # torch-cuda-bfloat16 by GPU and by CPU verifiers
#   bash tools/device/gpu-run.sh vllm-cal    # vllm-cuda-bfloat16 by GPU and by CPU verifiers
#   bash tools/device/gpu-run.sh tests       # the gpu-marked tests (after calibration: some
#                                            # judge with the calibrated bands, else skip)
#   bash tools/device/gpu-run.sh bench-torch # bench/sampler.py on CUDA; bench/gpu.py with torch
#   bash tools/device/gpu-run.sh bench-vllm  # bench/gpu.py: verified vs plain vLLM, batch 1/8/32
#
# Every stage appends its log to $OUT/<stage>.log and leaves $OUT/results.tgz with what it wrote
# (thresholds, bench/results, docs/calibration); fetch it before the next call empties $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
stage=${1:?stage}
SITE=${VERIHIVE_SITE:-/root/verihive-site}
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 VERIHIVE_CACHE=/root/verihive-cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_USE_FLASHINFER_SAMPLER=0  # FlashInfer is not carried (docs/gpu-setup.md)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log="$OUT/$stage.log"
py=python3
pack() {
    tar czf "$OUT/results.tgz" --exclude="*.py" --exclude=__pycache__ bft/thresholds bench/results \
        docs/calibration 2>/dev/null
    echo "packed $(du -h "$OUT/results.tgz" | cut -f1) into results.tgz"
}
trap pack EXIT
run() { echo "+ $*" | tee -a "$log"; /usr/bin/time -f "  (%e s)" "$@" 2>&1 | tee -a "$log"; }
case "$stage" in
    check)
        run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        run $py -c "import torch, transformers, cryptography, pymerkle, grpc, google.protobuf as p; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), transformers.__version__, grpc.__version__, p.__version__)"
        run $py -c "import vllm; print('vllm', vllm.__version__)"
        run $py -c "from executor.model import load_smollm2; m = load_smollm2(); print(m.name, m.model_id.hex()[:16])"
        ;;
    tests)
        run $py -m pytest -q -m gpu -p no:cacheprovider tests/executor/test_cuda.py tests/executor/test_vllm.py -ra
        ;;
    calibrate)
        for v in "cuda bfloat16" "cpu float32"; do
            set -- $v
            run $py -m bench.calibrate --executor-device cuda --executor-dtype bfloat16 \
                --verifier-device "$1" --verifier-dtype "$2"
        done
        ;;
    vllm-cal)
        for v in "cuda bfloat16" "cpu float32"; do
            set -- $v
            run $py -m bench.calibrate --executor-backend vllm --executor-device cuda \
                --executor-dtype bfloat16 --verifier-device "$1" --verifier-dtype "$2"
        done
        ;;
    bench-torch)
        run $py -m bench.sampler --device cuda --batches 1 8 32 64
        run $py -m bench.gpu --backends torch --tokens 64 --repeats 3
        ;;
    bench-vllm)
        run $py -m bench.gpu --backends vllm --batches 1 8 32 --tokens 64 --repeats 3
        ;;
    *)
        echo "unknown stage $stage" >&2
        exit 2
        ;;
esac
