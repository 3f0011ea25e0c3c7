"""The tables of a suite that a real worker runs in seconds (builtin:tiny-random, 3 steps).

Shared by the end-to-end tests of the local and the Slurm backends; `.format(suite=NAME)`
fills in the suite's name, and each test appends its own tables.
"""

TINY_SUITE = """
[suites.{suite}]
name = "{{method}}_s{{seed}}"
[suites.{suite}.base.model]
model_name_or_path = "builtin:tiny-random"
[suites.{suite}.base.dataset]
dataset_name_or_path = "builtin:countdown"
data_size = 32
eval_size = 8
[suites.{suite}.base.training]
max_steps = 3
save_steps = 2
logging_steps = 1
per_device_train_batch_size = 4
gradient_accumulation_steps = 1
num_generations = 2
max_prompt_length = 32
max_completion_length = 8
bf16 = false
"""
