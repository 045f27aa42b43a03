"""One rollback helper: :class:`LearnerSnapshot` copies what a run can change to host memory and puts it back exactly.

It serves ``Learner.load`` (a file that does not fit leaves the learner
unchanged), the checkpoint's resume and ``on_nan="restore"`` (model, optimizer
and scaler back to a good state) and the LR range tests (everything back, bit
for bit, however the sweep ended).

``everything=True`` (range tests): parameters, buffers, gradients and train/eval
modes of every module, the optimizer's state and param groups, the fp16 scaler,
the given callbacks' ``state_dict``, the loaders' generators, every attribute of
the learner (its :class:`clrfit.state.TrainingState` copied) and the RNG states.
``everything=False`` (loading a file): the same minus the learner's attributes,
loader generators and RNG states, which loading a file does not touch.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch

from .callback import Callback
from .serialization import get_rng_states, set_rng_states
from .state import loader_generators

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


class LearnerSnapshot:
    """Everything a training run can change on a learner, copied to host memory; :meth:`restore` puts it back exactly."""

    def __init__(self, learn: "Learner", everything: bool = True, callbacks: Sequence[Callback] | None = None) -> None:
        self.learn = learn
        self.everything = everything
        copies: dict[int, torch.Tensor] = {}  # tied weights are copied once

        def keep(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in copies:
                copies[id(t)] = _host_copy(t)
            return copies[id(t)]

        modules = list({id(m): m for model in (learn.train_model, learn.eval_model, learn.model)
                        for m in model.modules()}.values())
        self.modes = [(m, m.training) for m in modules]
        # Tensors are put back into the very objects the model held (the optimizer refers to them).
        self.tensors = [(slots, name, t, None if t is None else keep(t))
                        for m in modules for slots in (m._parameters, m._buffers) for name, t in list(slots.items())]
        self.grads = [(p, None if p.grad is None else _host_copy(p.grad)) for p in learn.model.parameters()]
        opt = learn.opt
        self.opt_attrs = dict(opt.__dict__)
        self.groups = [(g, list(g.items()), {k: copy.deepcopy(v) for k, v in g.items() if k != "params"})
                       for g in opt.param_groups]
        self.group_list = list(opt.param_groups)
        self.opt_state_obj = opt.state
        self.opt_state = {p: (s, [(k, v, _host_copy(v) if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in s.items()])
                          for p, s in opt.state.items()}
        self.precision = copy.deepcopy(learn.precision.state_dict())
        self.callbacks = [(cb, copy.deepcopy(cb.state_dict())) for cb in (learn.callbacks if callbacks is None else callbacks)]
        if everything:
            self.generators = [(g, g.get_state()) for g in loader_generators((learn.data.trn_dl, learn.data.val_dl))]
            self.attrs = dict(learn.__dict__)
            self.state = copy.deepcopy(learn.state)  # a value the run mutates in place
            self.rng = get_rng_states()

    @torch.no_grad()
    def restore(self) -> None:
        """Put everything back, bit for bit."""
        learn = self.learn
        for slots, name, original, saved in self.tensors:
            slots[name] = original
            if original is not None:
                original.copy_(saved)
        for p, grad in self.grads:
            p.grad = None if grad is None else grad.to(p.device)
        for module, training in self.modes:
            module.training = training
        self._restore_optimizer()
        learn.precision.load_state_dict(copy.deepcopy(self.precision))
        for cb, state in self.callbacks:
            cb.load_state_dict(copy.deepcopy(state))
        if not self.everything:
            return
        for generator, state in self.generators:
            generator.set_state(state)
        learn.__dict__.clear()
        learn.__dict__.update(self.attrs)
        learn.state = copy.deepcopy(self.state)
        set_rng_states(self.rng)

    def _restore_optimizer(self) -> None:
        opt = self.learn.opt
        opt.__dict__.clear()
        opt.__dict__.update(self.opt_attrs)
        opt.param_groups[:] = self.group_list
        for group, items, saved in self.groups:
            group.clear()
            group.update((k, v if k == "params" else saved[k]) for k, v in items)
        state = self.opt_state_obj
        opt.state = state
        for p in [p for p in state if p not in self.opt_state]:
            del state[p]
        for p, (entry, values) in self.opt_state.items():
            entry.clear()
            for key, original, saved in values:
                if torch.is_tensor(original):
                    original.copy_(saved)
                    entry[key] = original
                else:
                    entry[key] = saved
            state[p] = entry
