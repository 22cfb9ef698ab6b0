"""fitsketch benchmarks: `python -m bench.bench_minhash` etc.; results in bench/results/."""
