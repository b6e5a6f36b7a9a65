"""Fine-tunes an exported tiny Mixtral with HF Trainer under torchrun (CPU, gloo), logging routing with
moekit_routing.RoutingLogCallback. Run by test_scale_out_distributed.py.

For the test's single-process recomputation it also saves, per optimizer step s, the weights the step
started from (rank 0, `weights-s.pt`) and every rank's input ids (`inputs-s-rRANK.npy`).
"""
import argparse
import os

import numpy as np
import torch
from transformers import MixtralForCausalLM, Trainer, TrainerCallback, TrainingArguments

from moekit_routing import RoutingLogCallback


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, sequences):
        self.sequences = sequences

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, index):
        ids = torch.tensor(self.sequences[index])
        return {"input_ids": ids, "labels": ids.clone()}


class RecordSteps(TrainerCallback):
    """Saves what a single process needs to recompute each step's routing."""

    def __init__(self, out):
        self.out = out
        self.inputs = []
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def pre_hook(module, hook_args, hook_kwargs):
            if module.training:
                self.inputs.append(hook_kwargs["input_ids"].detach().numpy().copy())
        self.handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if args.process_index == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       os.path.join(self.out, f"weights-{state.global_step + 1}.pt"))

    def on_step_end(self, args, state, control, **kwargs):
        np.save(os.path.join(self.out, f"inputs-{state.global_step}-r{args.process_index}.npy"), np.concatenate(self.inputs))
        self.inputs = []

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--routing-log", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    options = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    vocab = 64
    sequences = [rng.integers(3, vocab, 16).tolist() for _ in range(32)]
    model = MixtralForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    args = TrainingArguments(output_dir=options.out, per_device_train_batch_size=2, max_steps=options.steps, learning_rate=5e-3,
                             lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, ddp_backend="gloo", seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(sequences),
                      callbacks=[RoutingLogCallback(options.routing_log), RecordSteps(options.out)])
    trainer.train()
    # Without this, a gloo worker thread can outlive the interpreter's teardown and abort the rank
    # ("terminate called without an active exception", pytorch/pytorch#190489) after training succeeded.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
