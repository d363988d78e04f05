"""Circuits: the edge graph, attribution (EAP, EAP-IG, exact), patched evaluation, selection and pruning,
faithfulness and the circuit-size search, circuit files, and one-call discovery."""
