"""What every language model here shares: the one pass (`run`) through an explicit state, the loss,
generation, saving and loading, the architecture registry.

`LanguageModel` leaves the network to its subclasses. TEN and the transformer baseline share theirs
(stack.py: embedding, pre-norm blocks, final norm, tied head) and differ only in the sequence mixer, so
comparisons isolate it; the Mamba-2 peer (baselines/mamba2.py) is transformers' model, unmodified.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from .atomic import atomic_write
from .modules.block import is_no_weight_decay, no_weight_decay
from .sampling import check_sampling_args, sample_next_token

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURES: dict[str, type[LanguageModel]] = {}  # filled by each subclass's `architecture`
MODEL_TYPE = "ten"  # config.json's "model_type", by which transformers' AutoConfig finds ten's (hf)
# Keys that only transformers writes into a config.json (or `ten export` for it): a config with one holds other
# settings of transformers' beside the model's own.
TRANSFORMERS_KEYS = frozenset({"transformers_version", "architectures", "auto_map"})
# Parameters up to which from_pretrained builds a model as usual rather than on the meta device (see there): about
# 0.5 s of initialisation on a 2-core CPU, under the ~1.1 s that importing torch._dynamo takes there.
EAGER_BUILD_LIMIT = 64_000_000


def config_fields(architecture: str) -> set[str]:
    """The settings an architecture's config has (num_eigenstates is TEN's, not the transformer's)."""
    return {f.name for f in dataclasses.fields(ARCHITECTURES[architecture].config_class)}


@dataclass
class RecurrentState:
    """Everything a model carries from one call to the next: one entry per layer.

    For TEN its size does not grow with the context, which is what makes each generated token O(1);
    for the transformer baseline it is the KV cache, which does.
    """

    layers: list[Any] = field(default_factory=list)


class LMOutput(NamedTuple):
    """What one pass (`LanguageModel.run`) gives."""

    logits: Tensor  # (B, T, vocab)
    state: RecurrentState  # after these positions: pass it to the next call to continue
    aux_loss: Tensor | None  # the mixers' raw aux loss (see aux_loss_from); None if no mixer has one


class LossTerms(NamedTuple):
    """`LanguageModel.loss`: the loss and its parts."""

    loss: Tensor  # ce_loss + aux_loss_weight * aux_loss (ce_loss itself where there is no aux loss)
    ce_loss: Tensor
    aux_loss: Tensor | None


def with_standard_strides(tensor: Tensor) -> Tensor:
    """``tensor``, copied if its strides are not the row-major ones of its shape (size-1 dims included)."""
    expected, stride = [], 1
    for size in reversed(tensor.shape):
        expected.append(stride)
        stride *= size
    if tensor.stride() == tuple(reversed(expected)):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def map_tensors(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``state`` with ``fn`` applied to every tensor in it (lists and dataclasses walked; ints and None kept)."""
    if torch.is_tensor(state):
        return fn(state)
    if isinstance(state, list):
        return [map_tensors(item, fn) for item in state]
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **{f.name: map_tensors(getattr(state, f.name), fn)
                                             for f in dataclasses.fields(state)})  # fmt: skip
    return state


def load_config(path: Path) -> tuple[str, Any]:
    """(architecture, config) from a config.json; files without the key are TEN's (the first format).

    A config that transformers wrote, or `ten export` (it has one of TRANSFORMERS_KEYS), also holds transformers'
    own settings: only the architecture's fields are read from it.
    """
    try:
        values = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid JSON config: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} does not hold a config object")
    model_type = values.pop("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{path} is the config of a {model_type!r} model, not a ten model")
    architecture = values.pop("architecture", "ten")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if TRANSFORMERS_KEYS & values.keys():
        values = {k: v for k, v in values.items() if k in config_fields(architecture)}
    config_class = ARCHITECTURES[architecture].config_class
    missing = sorted(config_fields(architecture) - set(values) - config_class.added_later)
    if missing:  # a default would build another model than the one saved
        raise ValueError(f"{path} lacks the config field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        return architecture, config_class.from_dict(values)
    except ValueError as err:  # an unknown key, a value of the wrong type or out of range: name the file
        raise ValueError(f"{path}: {err}") from None


Shapes = dict[str, tuple[int, ...]]  # tensor name -> shape


def check_weight_shapes(saved: Shapes, expected: Shapes, directory: Path) -> None:
    """The tensors of a weights file against those its config.json builds, the first difference named."""
    where = f"{directory}: {WEIGHTS_FILE} does not match {CONFIG_FILE}"
    for name, shape in expected.items():
        if name not in saved:
            raise ValueError(f"{where}: the config has a tensor {name} of shape {shape} that the weights lack")
        if saved[name] != shape:
            raise ValueError(f"{where}: {name} has shape {saved[name]} in the weights, {shape} by the config")
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise ValueError(f"{where}: the weights hold {unexpected[0]}, which the config has no place for")


def tied_names(model: nn.Module) -> dict[str, str]:
    """{later name: first name} of each tensor the model holds under several names (a head tied to the embedding):
    a weights file holds it once, under either."""
    first: dict[int, str] = {}
    return {name: first[id(t)] for name, t in model.state_dict(keep_vars=True).items()
            if first.setdefault(id(t), name) != name}  # fmt: skip


def with_tied_names(weights: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``weights`` with each tied tensor under all its names, as ``load_state_dict(strict=True)`` expects."""
    weights = dict(weights)
    for alias, name in tied_names(model).items():
        if alias in weights or name in weights:
            weights.setdefault(alias, weights.get(name, weights.get(alias)))
            weights.setdefault(name, weights[alias])
    return weights


class LanguageModel(nn.Module):
    """A causal language model with an explicit state. A subclass names its `architecture` (which registers it)
    and `config_class`, and gives `run`, `check_state`, `state_bytes` and `summary`."""

    architecture: ClassVar[str]
    config_class: ClassVar[type]
    # The key of the mixers' aux loss in compute_loss's dict ("aux_loss" where a model names none).
    aux_loss_name: ClassVar[str | None] = None
    # Names of the parameters and buffers (their own names, without the module path) that `cast` keeps in float32:
    # those that set a recurrence's dynamics, which half precision would move (the state itself is float32 anyway).
    keep_float32: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "architecture" in cls.__dict__:  # a shared layout (stack.py) is no architecture of its own
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self._compiled_step: Callable | None = None  # decode_step's, made on first use

    def run(self, ids: Tensor, state: RecurrentState | None = None) -> LMOutput:
        """The one pass every caller makes (forward, compute_loss, generation, transformers' model): ids (B, T)
        from ``state`` (None: from the start). Nothing is checked here; the entry points check their input once
        (check_token_ids, check_state), so no decoding step pays for it."""
        raise NotImplementedError

    def check_state(self, state: Any, batch: int) -> None:
        """One ValueError for a state that this model did not return for a batch of ``batch`` rows (another
        architecture's, another size's, another batch's): shapes only, no wait for the device."""
        raise NotImplementedError

    def decoding_state(self, state: RecurrentState) -> RecurrentState:
        """``state`` in the form a compiled one-token step takes: the same types at every step, so that one graph
        serves them all (the default: the state as it is)."""
        return state

    @property
    def aux_loss_weight(self) -> float:
        """The aux loss's weight in ``loss``: 0 unless a model maps one of its settings onto it."""
        return 0.0

    # ------------------------------------------------------------------ forward and loss

    def check_token_ids(self, ids: Tensor, check_range: bool | None = None) -> None:
        """Dtype and shape; and the id range (check_range None: on the CPU only, where reading min and
        max costs no wait for a GPU on every call; the embedding checks on the device)."""
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"token ids must have shape (batch, time), got {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError(f"token ids must not be empty, got shape {tuple(ids.shape)}")
        if check_range is None:
            check_range = ids.device.type == "cpu" and not torch.compiler.is_compiling()
        if not check_range:
            return
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

    def forward(
        self, ids: Tensor, state: RecurrentState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, RecurrentState]:
        """Logits (B, T, vocab). With ``return_state``, also the state to pass to the next call."""
        self.check_token_ids(ids)
        if state is not None:
            self.check_state(state, ids.shape[0])
        out = self.run(ids, state)
        return (out.logits, out.state) if return_state else out.logits

    def loss(self, logits: Tensor, targets: Tensor, aux_loss: Tensor | None = None) -> LossTerms:
        """The one loss, compute_loss's and transformers' (hf): the mean cross-entropy over the counted targets
        (-100 is ignored; 0 where none is counted, not the NaN of a mean over nothing) plus aux_loss_weight *
        ``aux_loss``. ``logits`` (B, T, vocab) and ``targets`` (B, T) align position by position."""
        targets = targets.flatten().long()
        ce_sum = F.cross_entropy(logits.float().flatten(0, 1), targets, ignore_index=-100, reduction="sum")
        ce_loss = ce_sum / (targets != -100).sum().clamp(min=1)
        loss = ce_loss if aux_loss is None else ce_loss + self.aux_loss_weight * aux_loss
        return LossTerms(loss, ce_loss, aux_loss)

    def compute_loss(self, inputs: Tensor, targets: Tensor, return_dict: bool = False) -> Tensor | dict[str, Tensor]:
        """`loss` of predicting ``targets`` (-100: ignored) from ``inputs``.

        The dict holds loss and ce_loss, and the raw aux loss under ``aux_loss_name`` if the mixers
        have one (without, loss is ce_loss). Where every target is -100 there is nothing to predict:
        ce_loss is 0, with a warning where counting costs no wait for a GPU (as check_token_ids' range
        check: on the CPU, outside torch.compile).
        """
        self.check_token_ids(inputs)
        if targets.shape != inputs.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must match inputs {tuple(inputs.shape)}")
        if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
            raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
        if targets.device.type == "cpu" and not torch.compiler.is_compiling():
            self.check_targets(targets)
        out = self.run(inputs)
        terms = self.loss(out.logits, targets, out.aux_loss)
        if not return_dict:
            return terms.loss
        losses = {"loss": terms.loss, "ce_loss": terms.ce_loss}
        if terms.aux_loss is not None:
            losses[self.aux_loss_name or "aux_loss"] = terms.aux_loss
        return losses

    def check_targets(self, targets: Tensor) -> None:
        """Targets are token ids or -100 (ignored); warn where none is counted."""
        targets = targets.flatten().long()
        counted = targets != -100
        outside = counted & ((targets < 0) | (targets >= self.config.vocab_size))
        if bool(outside.any()):
            bad = int(targets[outside][0])
            raise ValueError(f"targets must be token ids in [0, {self.config.vocab_size}) or -100 (ignored), got {bad}")
        if not bool(counted.any()):
            warnings.warn("every target is -100 (ignored): the cross-entropy is 0, nothing was predicted", stacklevel=3)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()  # not inference_mode: the returned ids may feed a training step
    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        compile_step: bool | None = None,
    ) -> Tensor:
        """Prompt plus ``max_new_tokens`` sampled tokens, (B, T + max_new_tokens).

        The prompt is read in one parallel pass; each new token is then one step through the state
        (for TEN, the same cost at any context length). ``temperature=0`` is greedy.
        ``compile_step``: see `decode_step` (None: on CUDA only).
        """
        check_sampling_args(temperature, top_k, top_p)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        ids = prompt_ids.unsqueeze(0) if prompt_ids.dim() == 1 else prompt_ids
        if ids.shape[-1] == 0:
            raise ValueError("the prompt must hold at least one token")
        self.check_token_ids(ids, check_range=True)  # once per call, on any device
        ids = ids.long()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            logits, state, _ = self.run(ids)
            step = self.decode_step(ids.device.type == "cuda" if compile_step is None else compile_step)
            new_tokens = []
            for _ in range(max_new_tokens):
                token = sample_next_token(logits[:, -1], temperature, top_k, top_p, generator)
                new_tokens.append(token)
                logits, state = step(token, state)
        finally:
            self.train(was_training)
        return torch.cat([ids, *new_tokens], dim=1)

    def decode_step(self, compiled: bool = False) -> Callable[[Tensor, RecurrentState], tuple[Tensor, RecurrentState]]:
        """One token (B, 1) through the state: (logits, new state).

        Compiled, the step runs as one graph (on CUDA, replayed as CUDA graphs: mode
        "reduce-overhead", as mamba_ssm decodes), without the Python and launch cost of each layer's
        few small ops. Only for a state of fixed size: a KV cache changes shape every token and
        would recompile every token.
        """
        fixed_size = self.state_bytes(1) == self.state_bytes(2)
        if not (compiled and fixed_size):
            return self.step
        if self._compiled_step is None:
            mode = "reduce-overhead" if next(self.parameters()).is_cuda else None
            self._compiled_step = torch.compile(self.step, mode=mode, dynamic=False)
        return self._compiled_or_eager_step

    def step(self, token: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """One decoding step, eager: token (B, 1) through ``state``, (logits (B, 1, vocab), new state); unchecked
        as `run` (generate checks its input once). `decode_step` gives the compiled form."""
        logits, state, _ = self.run(token, state)
        return logits, state

    def _compiled_or_eager_step(self, token: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """The compiled step; where compiling fails (a backend missing on this machine), the eager one."""
        if self._compiled_step != self.step:  # a bound method: a new object each time, equal when the same
            try:
                # One graph for every step: each mixer's state in its decoding form, and row-major strides
                # (the graph is specialised on strides; a prefill's last-step slice of batch 1 keeps the prompt's).
                state = map_tensors(self.decoding_state(state), with_standard_strides)
                if not token.is_cuda:
                    return self._compiled_step(token, state)
                torch.compiler.cudagraph_mark_step_begin()
                logits, state = self._compiled_step(token, state)
                # The next replay writes into the same output buffers, and these outputs are its inputs: copy them.
                return logits.clone(), map_tensors(state, torch.clone)
            except Exception as err:  # noqa: BLE001  (the eager step computes the same thing)
                warnings.warn(f"decoding eagerly: compiling the step failed ({type(err).__name__}: {err})",
                              stacklevel=2)  # fmt: skip
                self._compiled_step = self.step
        return self.step(token, state)

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json (with the architecture's name) and model.safetensors, each written atomically; with
        transformers installed, the folder loads with `AutoModelForCausalLM.from_pretrained` (hf)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        values = {"model_type": MODEL_TYPE, "architecture": self.architecture, **self.config.to_dict()}
        text = json.dumps(values, indent=2) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(text))
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_model(self, str(p)))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LanguageModel:
        """Load a saved model; on LanguageModel itself, of whichever architecture config.json names. ``dtype``: the
        weights' precision (None: as saved, float32), see `cast`."""
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no {name}: not a saved model")
        architecture, config = load_config(directory / CONFIG_FILE)
        model_class = ARCHITECTURES[architecture]
        if not issubclass(model_class, cls):
            raise ValueError(f"{directory} holds a {architecture!r} model, not a {cls.__name__}")
        weights = directory / WEIGHTS_FILE
        # A large model is built on the meta device (no memory, no initialisation) to compare shapes with the
        # file's header before anything is allocated; then given storage, which the weights fill. But torch runs
        # a meta tensor's initialisation through Python kernels that import torch._dynamo (~1.1 s on a 2-core
        # CPU), more than a small model's own initialisation takes (~0.1 s for 11 M parameters there): a small
        # one is built as usual, its allocation bounded by EAGER_BUILD_LIMIT before the check, and the global
        # random state left as it was (fork_rng), as the meta build leaves it.
        empty = config.parameter_count() > EAGER_BUILD_LIMIT
        with torch.device("meta") if empty else torch.random.fork_rng(devices=[]):
            model = model_class(config)
        try:
            with safe_open(weights, framework="pt") as header:
                saved = {name: tuple(header.get_slice(name).get_shape()) for name in header.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights} is not a readable weights file: {err}") from err
        aliases = tied_names(model)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in aliases}
        check_weight_shapes({aliases.get(name, name): shape for name, shape in saved.items()}, expected, directory)
        # to_empty makes new Parameters: the no-weight-decay tags set in __init__ are carried over by name.
        if empty:
            tagged = {name for name, param in model.named_parameters() if is_no_weight_decay(param)}
            model.to_empty(device=device)
            no_weight_decay(*(param for name, param in model.named_parameters() if name in tagged))
        else:
            model.to(device)
        try:
            load_model(model, str(weights), strict=True, device=str(device))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"{weights} is not a readable weights file: {err}") from err
        return model if dtype is None else model.cast(dtype)

    def cast(self, dtype: torch.dtype) -> LanguageModel:
        """The model with its floating parameters and buffers in ``dtype`` (bfloat16 or float16 to decode on a
        GPU), but those `keep_float32` names, as under autocast. In place; returns the model."""
        if not dtype.is_floating_point:
            raise ValueError(f"a model's dtype must be a floating point type, got {dtype}")
        for module in self.modules():
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in tensors:
                if tensor.is_floating_point() and name not in self.keep_float32:
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = tensor.data.to(dtype)
                    else:
                        setattr(module, name, tensor.to(dtype))
        return self

    # ------------------------------------------------------------------ reports

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_bytes(self, context_length: int) -> int:
        """Bytes of state (RecurrentState) one sequence carries after ``context_length`` tokens, all layers."""
        raise NotImplementedError

    def summary(self) -> str:
        """What the model is, for the run's header."""
        raise NotImplementedError
