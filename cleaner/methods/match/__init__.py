"""match: a hub-corrected match score (CSLS or negCLIPLoss against a bounded
reference pool of the data) with a clean probability calibrated against
shuffled pairs, and a keep flag chosen without labels; declaration in
method.py."""
