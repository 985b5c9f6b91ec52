"""transformers' own common tests (ModelTesterMixin, ConfigTester, and GenerationTesterMixin where present) run on
tiny TEN, HTEN and hybrid models, the way transformers' Mamba-2 and RWKV tests run them on theirs.

The mixins are transformers' test files for the installed version; tests/transformers_common.py says where they
come from. Without them this module is skipped, saying how to get them.
"""

import contextlib
import unittest

import pytest

pytest.importorskip("transformers")
pytest.importorskip("parameterized", reason="transformers' common tests need the parameterized package (dev extra)")

from . import transformers_common  # noqa: E402

FOLDER = transformers_common.tests_folder()
if FOLDER is None:
    pytest.skip(transformers_common.missing_reason(), allow_module_level=True)
common = transformers_common.load(FOLDER)

import torch  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES  # noqa: E402
from transformers_tests.generation.test_utils import GenerationTesterMixin  # noqa: E402
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402

from temporal_eigenstate_networks.hf.configuration import TenConfig  # noqa: E402
from temporal_eigenstate_networks.hf.modeling import TenForCausalLM, TenModel  # noqa: E402

ModelTesterMixin, ids_tensor = common.ModelTesterMixin, common.ids_tensor
HAS_GENERATION_MIXIN = not transformers_common.is_stand_in("generation.test_utils")
NO_CONFIG_KWARGS = (
    "the common config kwargs (tests/utils/test_configuration_utils.py) are in transformers' repository only, not in "
    f"the source distribution: set {transformers_common.ENVIRONMENT_VARIABLE} to a checkout's tests/ to check them"
)
NO_GENERATION_MIXIN = (
    "transformers' generation mixin (tests/generation/test_utils.py) is in its repository only, not in the source "
    f"distribution: set {transformers_common.ENVIRONMENT_VARIABLE} to a checkout's tests/ to run it"
)


@contextlib.contextmanager
def listed_as_transformers_model():
    tables = ((MODEL_MAPPING_NAMES, "TenModel"), (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "TenForCausalLM"))
    for table, class_name in tables:
        table[TenConfig.model_type] = class_name
    try:
        yield
    finally:
        for table, _ in tables:
            del table[TenConfig.model_type]


class TenModelTester:
    """A tiny model of each kind, and its inputs (what transformers' model testers give the mixins)."""

    def __init__(self, parent, use_hten=False, layer_pattern=None, batch_size=3, seq_length=7, vocab_size=99):
        self.parent = parent
        self.use_hten, self.layer_pattern = use_hten, layer_pattern
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers = 32, 2
        self.is_training = True

    def get_config(self) -> TenConfig:
        return TenConfig(
            vocab_size=self.vocab_size, d_model=self.hidden_size, n_layers=self.num_hidden_layers, num_eigenstates=8,
            num_heads=2, max_seq_len=32, use_hten=self.use_hten, hten_scales=[1, 2], scan_backend="chunked",
            layer_pattern=self.layer_pattern, attention_window=4, attention_heads=2,
            bos_token_id=self.vocab_size - 1, eos_token_id=self.vocab_size - 1, pad_token_id=self.vocab_size - 1,
        )  # fmt: skip

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        return self.get_config(), {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class TenCommonTests(ModelTesterMixin):
    """The mixins' tests for one kind of model (a subclass per kind below)."""

    @classmethod
    def setUpClass(cls):
        # The mixins pick the tests a class gets (labels, the loss tests) from transformers' static tables of its
        # own models' class names; ten's classes are registered with the Auto classes at run time instead. Listed
        # there for these tests, as a model inside transformers would be.
        super().setUpClass()
        cls.enterClassContext(listed_as_transformers_model())

    all_model_classes = (TenModel, TenForCausalLM)
    has_attentions = False  # the mixers return no attention weights (the recurrent layers have none), as Mamba's
    use_hten, layer_pattern = False, None

    def setUp(self):
        self.model_tester = TenModelTester(self, self.use_hten, self.layer_pattern)
        self.config_tester = ConfigTester(
            # d_model: the name config.json stores (hidden_size maps onto it, and the tester reads the JSON back)
            self,
            config_class=TenConfig,
            d_model=37,
            common_properties=["hidden_size", "num_hidden_layers"],
        )

    def test_config(self):
        if transformers_common.is_stand_in("utils.test_configuration_utils"):  # test_config_arguments_init's part
            self.config_tester.check_config_arguments_init = lambda: None
        self.config_tester.run_common_tests()

    def test_config_arguments_init(self):
        if transformers_common.is_stand_in("utils.test_configuration_utils"):
            self.skipTest(NO_CONFIG_KWARGS)
        self.config_tester.check_config_arguments_init()

    def test_generation_tester_mixin_inheritance(self):
        if not HAS_GENERATION_MIXIN:
            self.skipTest(NO_GENERATION_MIXIN)
        super().test_generation_tester_mixin_inheritance()


def _kind(name: str, use_hten: bool, layer_pattern: str | None) -> type:
    bases = (TenCommonTests, GenerationTesterMixin) if HAS_GENERATION_MIXIN else (TenCommonTests,)
    return type(name, (*bases, unittest.TestCase), {"use_hten": use_hten, "layer_pattern": layer_pattern})


TestTenCommon = _kind("TestTenCommon", False, None)
TestHtenCommon = _kind("TestHtenCommon", True, None)
TestHybridAttentionCommon = _kind("TestHybridAttentionCommon", False, "ea")  # e + full attention
TestHybridWindowCommon = _kind("TestHybridWindowCommon", True, "hw")  # h + sliding-window attention
