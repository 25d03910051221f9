"""The framework every task stands on: the command line, THE train loop, the Task base and the
registry that names tasks and models, sharding, checkpoints, the workdir, optimizers, durations,
evaluation, input streams, generic weight handling, the fit report and the reproduction harness.
It knows nothing about classification, boxes or masks."""
