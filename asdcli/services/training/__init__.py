"""Training every part: the loop, its schedule and precision, branches, fusion head, meta-learner, the pipeline of `asd train`, freeze-debug and the fusion's prior."""
