"""Code beside the core, as FAISS keeps ``contrib/``: the demo, the benchmark and demo workloads
(digits zoos, entity-matching tables, their exact ground truth) and the optional MiniLM text
encoder for ProbeLog concept search. The core (engine/, storage/, kernels/) never imports it at
module level; its old import paths (``fitsketch.workloads``, ``fitsketch.demo``,
``fitsketch.text_encoder``) are the same modules."""
