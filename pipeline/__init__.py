"""What the stages share, one subpackage per concern (distill, training, tasks, data, models, shipping), with the
entry points (cli, run) and the config schema every layer uses (config, schema, errors) beside them."""
