"""Speed and memory benchmarks: our kernels against our references, our models against Hugging Face
and mambapy, training throughput (MFU), and decoding cost against context length.

Every suite runs the compared implementations in one process on the same inputs and weights and
returns rows with ratios; `hybridlm bench` and the scripts in benchmarks/ print them."""
