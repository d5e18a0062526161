#!/usr/bin/env bash
# The paper recipes at their full length on a lent GPU (issue 16): several rows of `compactnets reproduce` side by
# side in one device call, each stopped with SIGTERM when BUDGET seconds have passed (train saves where it is), so
# that a later call, or a CPU, resumes it. Usage, on the device machine, from the repository root:
#     tools/gpu_runs.sh BUDGET ROW [ROW ...]
# e.g. tools/gpu_runs.sh 480 nin_cifar10 nin_xnornet_cifar10 resnet32_s8u1_cifar10 resnet56_s16u1_double_cifar10
#
# The data: ../shared/data does not travel to the device machine and the JPEGs with the repository exceed what
# does (64 MiB), so carry a pack of them (tools/jpeg_pack.py: each file's shared header once, 18 MB), made here:
#     grep -qx /gpu/ .git/info/exclude || echo /gpu/ >> .git/info/exclude
#     .venv/bin/python tools/jpeg_pack.py pack ../shared/data/cifar10 gpu/cifar10.npz
# and call the device tool with carry ["gpu"] and timeout_s 600 (BUDGET + ~2 minutes to unpack, decode and save).
# There the pack is unpacked to ../shared/data/cifar10, so that the runs record the commands the CPU runs do, and
# the runs go to training/gpu/ROW (a row's folder committed there, unfinished, is resumed). $OUT gets ROW.tar per
# row (its run folder without best.pth) and gpu_runs.log; here, `tar -xf ROW.tar -C training/gpu` for each and
#     .venv/bin/compactnets reproduce ROW... --table-only --output training/gpu
# writes their table (device, precision and epochs of each process are in the runs' args.json).
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:?"usage: tools/gpu_runs.sh BUDGET ROW [ROW ...]"}
shift
if [ $# -lt 1 ] || [ $# -gt 7 ]; then
    echo "gpu_runs: 1 to 7 rows (\$OUT takes 8 files: a tar per row and the log)" >&2
    exit 2
fi
python=${PYTHON:-python3}  # the device machine's python3 holds torch, torchvision, timm and safetensors
out=${OUT:?"gpu_runs: \$OUT (the device tool's folder of files to return) is not set"}
data=../shared/data/cifar10
logs=$(mktemp -d)
export PYTHONPATH=src OMP_NUM_THREADS=2

main() {
    [ -d $data ] || { mkdir -p "$(dirname $data)" && $python tools/jpeg_pack.py unpack gpu/cifar10.npz $data; }
    # decoded once into the cache that every run then reads (several runs decoding at once would race for it)
    $python -c "from compactnets.data.memory import decode_split
for split in ('train', 'test'): decode_split('$data', split, 'imagefolder')"
    $python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and
torch.cuda.get_device_name())"
    local pids=() status=0 row pid
    for row in "$@"; do
        timeout -s TERM "$budget" $python -m compactnets reproduce "$row" --data $data --output training/gpu \
            > "$logs/$row.log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done  # 124: stopped at the budget, saved
    for row in "$@"; do
        echo "== $row"
        tail -n 5 "$logs/$row.log"
        if [ -d "training/gpu/$row" ]; then tar -cf "$out/$row.tar" -C training/gpu --exclude best.pth "$row"; fi
    done
    echo "gpu_runs: done (last exit status $status; 124 means stopped at the budget, resumable)"
}

main "$@" 2>&1 | tee "$out/gpu_runs.log"  # also to $OUT; the pipeline ends with tee's last write
exit "${PIPESTATUS[0]}"
