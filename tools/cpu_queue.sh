#!/usr/bin/env bash
# The CPU training runs that issue 16 still owes, each resumed where it stopped. Start it first thing in a session,
# from the repository root:
#     OMP_NUM_THREADS=2 nohup tools/cpu_queue.sh >> training/queue.log 2>&1 &
# A stop signal (the session ending, or kill -TERM of this script's process group) reaches the row being trained,
# which saves where it is; the queue then stops. On the way out training/results.md is rebuilt with every row of
# the two CPU tables, and training/longer/results.md with the longer runs (the ablation's is training/levers/).
set -euo pipefail
cd "$(dirname "$0")/.."
compactnets=.venv/bin/compactnets
data=../shared/data/cifar10
longer=(nin_cifar10_cpu resnet32_s8u1_cifar10_cpu nin_xnornet_cifar10_cpu)
tables() {
    $compactnets reproduce xnor-net-cifar10-cpu shared-bases-cifar10-cpu --table-only --output training >/dev/null
    $compactnets reproduce "${longer[@]}" --table-only --output training/longer --compare training >/dev/null
}
trap tables EXIT
# Finished rows are skipped (reproduce reads their log.csv and args.json); each reproduce writes the table of its
# own rows, so the whole tables are written again before the first row trains.
$compactnets reproduce nin_xnornet_cifar10_cpu nin_cifar10_cpu resnet32_s8u1_cifar10_cpu --data $data --output training
$compactnets reproduce nin-xnornet-levers --epochs 10 --data $data --output training/levers
tables

# The NIN rows, in the order their teachers need: nin_gc_xnornet's recipe distils from the shipped nin_gc weights.
# Then the evidence for the NIN rows that missed after 60 epochs (nin 88.28 against 91.37, nin_xnornet 79.31
# against 81.75): the same recipes twice as long.
nin_rows() {
    $compactnets reproduce nin_gc_cifar10_cpu --data $data --output training
    [ -f src/compactnets/weights/nin_gc.cifar10jpeg_cpu60.safetensors ] ||
        .venv/bin/python tools/ship_weights.py training/nin_gc_cifar10_cpu --tag cifar10jpeg_cpu60 --recipe nin_gc_cifar10_cpu
    $compactnets reproduce nin_gc_xnornet_cifar10_cpu --data $data --output training
    $compactnets reproduce nin_cifar10_cpu nin_xnornet_cifar10_cpu --epochs 120 --data $data --output training/longer
}
# The ResNet rows: first the evidence for resnet32_s8u1 (87.28 against 90.92 after 60 epochs: the same recipe
# twice as long), which says whether the row still owed needs a longer recipe than 60 epochs, then that row, then
# the four optional rows.
resnet_rows() {
    $compactnets reproduce resnet32_s8u1_cifar10_cpu --epochs 120 --data $data --output training/longer
    $compactnets reproduce resnet56_s16u1_double_cifar10_cpu --data $data --output training
    $compactnets reproduce resnet32_s16u1_cifar10_cpu resnet32_s16u1_double_cifar10_cpu resnet56_s8u1_cifar10_cpu \
        resnet56_s16u1_cifar10_cpu --data $data --output training
}
# Which first depends on the CPU. Without bf16 (--amp auto then trains in fp32) a NIN row trains 2.7-4.3x slower
# than on a bf16 CPU and a ResNet row 2.4-2.6x (benchmarks/results/train_step_compile.txt, an Intel Xeon with AMX,
# against train_step_compile_epyc.txt, an AMD EPYC Zen 3): such a machine takes the ResNets, a bf16 one the NINs.
if [ "$(.venv/bin/python -c 'import torch; from compactnets.engine.precision import resolve_amp
print(resolve_amp("auto", torch.device("cpu"))[0])')" = bf16 ]; then
    echo "cpu_queue: this CPU has bf16: the NIN rows first"
    nin_rows
    resnet_rows
else
    echo "cpu_queue: this CPU has no bf16: the ResNet rows first"
    resnet_rows
    nin_rows
fi
