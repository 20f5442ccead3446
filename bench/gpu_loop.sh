# The whole training loop's speed on a GPU (bench/gpu.py measures the step alone): `dreamlet train`
# for a number of steps with each set of flags, the last logged images/s and the wall time.
#   bash bench/gpu_loop.sh STEPS "FLAGS" ...
export PYTHONPATH=src PYTHONUNBUFFERED=1
steps=$1; shift
for flags in "$@"; do
  rm -rf /tmp/loop; started=$(date +%s.%N)
  python3 -m dreamlet train --steps $steps --sample-every 0 --checkpoint-every 0 --out /tmp/loop $flags > /tmp/loop.log 2>&1 || { tail -3 /tmp/loop.log; continue; }
  echo "$flags | $(tail -1 /tmp/loop/train_log.csv | cut -d, -f4) img/s at the end | $(python3 -c "import time;print(round(time.time()-$started,1))") s wall"
done
