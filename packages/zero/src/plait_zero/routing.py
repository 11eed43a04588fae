"""``backward`` with several DeepSpeed engines, and what each ZeRO stage can do with gradients between steps.

One loss, one autograd pass. Before it, the loss's graph is searched for the trained
engines whose parameters it reaches (a GAN's generator loss reaches the discriminator
and the generator). The nearest one runs ``engine.backward(loss)``: it divides the loss
by the accumulation steps once and marks the autograd pass as its own, so DeepSpeed's
per-engine output hooks (DeepSpeed 0.19's "torch-style backward") do not divide again
for the other engines; those reduce their gradients through their own ZeRO gradient
hooks, and their post-backward bookkeeping (``_backward_epilogue``) runs once after the
pass, here, instead of from DeepSpeed's hook (which skips it for a model called twice in
one forward). Engines the loss reaches only through frozen parameters are left to
DeepSpeed's hooks: they get no gradient.

Torch adds the gradients of every backward until ``zero_grad()``; DeepSpeed reduces them
at the synchronising micro-step. ZeRO stage 3 keeps torch's rule (it adds, and its
``zero_grad`` discards). Stages 1 and 2 keep only the last backward that reached a model
at a synchronising micro-step, and stage 2 cannot discard what it accumulated over earlier
micro-steps. :class:`GradientLedger` follows each engine between steps and refuses,
before the backward or step, exactly the cases whose numbers would differ from torch's,
with the fix first. Imported from hook bodies only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from plait_zero.engine import ZeroPrecision

#: Nothing since the last step; gradients of micro-steps that do not synchronise; a synchronising backward's
#: gradients (already reduced by DeepSpeed); those gradients after ``zero_grad()`` (the next backward replaces them).
CLEAN, MICRO, BOUNDARY, DISCARDED = "clean", "micro", "boundary", "discarded"


def reached_engines(loss: torch.Tensor, owners: Mapping[int, Any]) -> list[Any]:
    """The trained engines whose parameters ``loss``'s graph accumulates gradients into, nearest first."""
    found: list[Any] = []
    node = loss.grad_fn
    if node is None:
        return found
    seen = {node}
    queue = [node]
    wanted = len({id(engine) for engine in owners.values()})
    for node in queue:  # breadth first: the list grows while it is walked
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf that gets a gradient
        if variable is not None:
            engine = owners.get(id(variable))
            if engine is not None and not any(engine is e for e in found):
                found.append(engine)
                if len(found) == wanted:
                    break
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                queue.append(child)
    return found


def backward_several(precision: ZeroPrecision, loss: torch.Tensor, boundary: bool, kwargs: dict[str, Any]) -> None:
    """One backward of ``loss`` for every trained engine it reaches (see the module's docstring)."""
    reached = reached_engines(loss, precision.owners())
    if not reached:  # no trained model's parameter: a plain backward, divided as the engines would
        (loss / precision.gradient_state.num_steps).backward(**kwargs)
        return
    if len(reached) > 1 and precision.mixed_precision == "fp16":
        names = " and ".join(precision.describe(engine) for engine in reached)
        raise RuntimeError(
            f"Use mixed_precision='bf16' (or 'no'), or give each model a loss of its own, to train several models "
            f"with one backward under backend 'zero': this loss reaches {names}, and each DeepSpeed engine scales "
            f"an fp16 loss by its own factor"
        )
    precision.ledger.reached(reached, boundary)
    first, others = reached[0], reached[1:]
    for engine in others:
        # DeepSpeed skips its post-backward hook for an engine inside engine.backward; it runs below instead.
        engine._running_engine_backward = True
    try:
        first.backward(loss, **kwargs)
    finally:
        for engine in others:
            engine._running_engine_backward = False
    for engine in others:
        engine._backward_epilogue()


class GradientLedger:
    """What each trained engine holds since its last step, and the refusals where DeepSpeed's numbers would
    differ from torch's. Engines are told apart by identity; ``describe`` names one in messages."""

    def __init__(self, describe: Callable[[Any], str]) -> None:
        self.describe = describe
        self._states: dict[int, str] = {}

    def forget(self, kept: Iterable[Any]) -> None:
        """Keep only the states of ``kept`` engines (after ``free_memory``)."""
        ids = {id(engine) for engine in kept}
        self._states = {key: state for key, state in self._states.items() if key in ids}

    def state(self, engine: Any) -> str:
        return self._states.get(id(engine), CLEAN)

    def reached(self, engines: Iterable[Any], boundary: bool) -> None:
        """Before a backward that gives ``engines`` gradients, at a synchronising micro-step or not."""
        updates = {}
        for engine in engines:
            state = self.state(engine)
            if _stage(engine) == 3:
                updates[id(engine)] = BOUNDARY if boundary else MICRO  # stage 3 adds, as torch does
                continue
            if state == BOUNDARY:
                stage = _stage(engine)
                raise RuntimeError(
                    f"Freeze {self.describe(engine)} in the backward that should not train it "
                    f"(model.requires_grad_(False)), call its optimizer's zero_grad() before its own backward, or "
                    f"add the losses into one accelerator.backward(): this backward would give it gradients again "
                    f"before its optimizer steps, and under ZeRO stage {stage} DeepSpeed keeps only the last "
                    f"backward's gradients at a synchronising micro-step, where torch adds them (ZeRO stage 3 adds "
                    f"them too)"
                )
            updates[id(engine)] = BOUNDARY if boundary else MICRO
        self._states.update(updates)

    def zero_grad(self, engine: Any) -> bool:
        """``zero_grad()`` at a synchronising micro-step; whether DeepSpeed's ``optimizer.zero_grad()`` must run."""
        state = self.state(engine)
        if state in (CLEAN, DISCARDED):
            return False
        stage = _stage(engine)
        if stage == 2 and state == MICRO:
            raise RuntimeError(
                f"Call optimizer.zero_grad() after optimizer.step() (HF Accelerate's order), not before "
                f"accelerator.backward(), for {self.describe(engine)}: under ZeRO stage 2 DeepSpeed has already "
                f"reduced the gradients of the earlier micro-steps into its partitions and cannot discard them, "
                f"where torch would (ZeRO stages 1 and 3 can)"
            )
        # Stage 3 and stage 1's earlier micro-steps are discarded by DeepSpeed's zero_grad(); a synchronising
        # backward's reduced gradients (stages 1, 2) are replaced by the next synchronising backward.
        self._states[id(engine)] = DISCARDED if stage != 3 and state == BOUNDARY else CLEAN
        return True

    def before_step(self, engine: Any) -> None:
        """Before ``engine.step()``: stages 1 and 2 step only on a synchronising backward's gradients."""
        state = self.state(engine)
        stage = _stage(engine)
        if stage == 3 or state == BOUNDARY:
            return
        held = {
            CLEAN: "no gradients",
            MICRO: "only gradients of micro-steps that did not synchronise",
            DISCARDED: "gradients that zero_grad() discarded",
        }[state]
        raise RuntimeError(
            f"Call accelerator.backward() on a loss that reaches {self.describe(engine)} in the synchronising "
            f"micro-step before its optimizer.step() (or do not step it): under ZeRO stage {stage} DeepSpeed steps "
            f"only on the gradients of a backward at a synchronising micro-step, and it holds {held} since its "
            f"last step"
        )

    def stepped(self, engine: Any) -> None:
        self._states[id(engine)] = CLEAN


def _stage(engine: Any) -> int:
    return int(engine.zero_optimization_stage())
