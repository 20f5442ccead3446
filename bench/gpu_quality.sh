# GPU runs of the default diffusion model (bench/gpu.py's JSON gets the rest): training runs of
# 3 minutes side by side on one GPU with the flags given per run, each judged on 64 prompts x 2 seeds.
#   bash bench/gpu_quality.sh "NAME:FLAGS" ...      e.g. "default:" "batch128:--batch-size 128"
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "${OUT:-/tmp/out}" /tmp/q
run() { name=$1; shift; python3 -m dreamlet train --minutes 3 --sample-every 0 --out /tmp/q/$name "$@" > /tmp/q/$name.log 2>&1 && python3 -m dreamlet eval --model /tmp/q/$name/model --benchmark shapes --prompts 64 --out /tmp/q/$name/eval.json > /tmp/q/$name.eval.log 2>&1; echo "$name exit $?"; }
for spec in "$@"; do run "${spec%%:*}" ${spec#*:} & done
wait
for spec in "$@"; do n=${spec%%:*}; echo "== $n (${spec#*:})"; tail -c 300 /tmp/q/$n.log | tr '\r' '\n' | tail -2; tail -2 /tmp/q/$n/train_log.csv
  python3 -c "import json;d=json.load(open('/tmp/q/$n/eval.json'));print({k:d[k] for k in ('seen','heldout','pair','seconds_per_image')})" 2>&1 | tail -1; done
cd /tmp/q && tar czf "${OUT:-/tmp/out}/q.tgz" */train_log.csv */eval.json *.log
