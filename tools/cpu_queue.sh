#!/usr/bin/env bash
# The CPU training runs that issue 16 still owes, in order (each full-precision teacher before its binary
# student), each resumed where it stopped. Start it first thing in a session, from the repository root:
#     OMP_NUM_THREADS=2 nohup tools/cpu_queue.sh >> training/queue.log 2>&1 &
# A stop signal (the session ending, or kill -TERM of this script's process group) reaches the row being trained,
# which saves where it is; the queue then stops. On the way out training/results.md is rebuilt with every row of
# the two CPU tables (the ablation's table is training/levers/results.md, the longer run's training/longer/).
set -euo pipefail
cd "$(dirname "$0")/.."
compactnets=.venv/bin/compactnets
data=../shared/data/cifar10
trap '$compactnets reproduce xnor-net-cifar10-cpu shared-bases-cifar10-cpu --table-only --output training >/dev/null' EXIT
$compactnets reproduce nin_xnornet_cifar10_cpu --data $data --output training
$compactnets reproduce nin-xnornet-levers --epochs 10 --data $data --output training/levers
for row in resnet32_s8u1_cifar10_cpu nin_gc_cifar10_cpu nin_gc_xnornet_cifar10_cpu resnet56_s16u1_double_cifar10_cpu; do
    $compactnets reproduce $row --data $data --output training
done
# Evidence for the binary row's miss (79.31 against 81.75 after 60 epochs): the same recipe twice as long.
$compactnets reproduce nin_xnornet_cifar10_cpu --epochs 120 --data $data --output training/longer
