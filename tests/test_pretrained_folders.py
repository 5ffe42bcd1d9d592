"""Pretrained (HF) folders are checked before use: a missing or broken
tokenizer, weights, index or config.json is one line naming the file, before
any data work and with no workdir or output folder left behind."""

import contextlib
import io
import json
import os
import pathlib
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hf_fixtures import save_tiny_bert, save_tiny_vit
from mmjax import cli
from mmjax.data.features import TextTokenizer
from mmjax.errors import MmjaxError
from mmjax.models import pretrained
from mmjax.models.encoders import hf_import
from test_config_fuzz import assert_refused

TESTS = os.path.dirname(os.path.abspath(__file__))

def _truncate(file):
  data = file.read_bytes()
  file.write_bytes(data[:len(data) // 2])


def _index(text):
  def write(folder):
    (folder / "model.safetensors.index.json").write_text(text)
  return write


def _edit_config(**changes):
  def write(folder):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
      if value is None:
        cfg.pop(key, None)
      else:
        cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
  return write


def _remove(*names):
  def write(folder):
    for name in names:
      (folder / name).unlink()
  return write


def _more_words_than_the_table(folder):
  (folder / "tokenizer.json").unlink()
  with open(folder / "vocab.txt", "a") as f:
    f.write("".join(f"extra{i}\n" for i in range(5)))


# (how the folder is broken, the file the one line names, what it says)
BROKEN_TEXT_FOLDERS = {
    "no_tokenizer_files": (_remove("tokenizer.json", "vocab.txt", "tokenizer_config.json"),
                           "", "no tokenizer files"),
    "garbage_tokenizer": (lambda d: (d / "tokenizer.json").write_text("{garbage"),
                          "", "cannot load its tokenizer"),
    "tokenizer_past_the_table": (_more_words_than_the_table, "",
                                 "the tokenizer has 12 ids, the embedding table only 7"),
    "vocab_size_not_the_table": (_edit_config(vocab_size=8), "",
                                 "table has 7 rows, config.json's vocab_size is 8"),
    "truncated_weights": (lambda d: _truncate(d / "model.safetensors"),
                          "model.safetensors", "not a readable safetensors file"),
    "garbage_weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x07" * 64),
                        "model.safetensors", "not a readable safetensors file"),
    "empty_weights": (lambda d: (d / "model.safetensors").write_bytes(b""),
                      "model.safetensors", "not a readable safetensors file"),
    "index_not_json": (_index("{"), "model.safetensors.index.json", "invalid JSON"),
    "index_without_weight_map": (_index('{"metadata": {}}'),
                                 "model.safetensors.index.json", "weight_map"),
    "index_names_a_missing_shard": (_index('{"weight_map": {"a": "shard-1.safetensors"}}'),
                                    "model.safetensors.index.json", "does not exist"),
    "config_missing_a_key": (_edit_config(hidden_size=None), "config.json",
                             "no 'hidden_size'"),
    "config_bad_value": (_edit_config(num_hidden_layers="two"), "config.json",
                         "num_hidden_layers='two' is not a positive integer"),
    "config_not_json": (lambda d: (d / "config.json").write_text("{"), "config.json",
                        "invalid JSON"),
    "config_a_list": (lambda d: (d / "config.json").write_text("[]"), "config.json",
                      "expected a JSON object"),
}


@pytest.fixture()
def tiny_bert(tmp_path):
  return save_tiny_bert(tmp_path / "bert", ["red", "shirt"], layers=1, hidden=8,
                        heads=2, max_len=16)


@pytest.mark.parametrize("case", list(BROKEN_TEXT_FOLDERS))
def test_a_broken_text_folder_is_one_line_naming_the_file(case, tiny_bert):
  pretrained.check_text_folder(tiny_bert)   # Sound before it is broken.
  breaks, file, needle = BROKEN_TEXT_FOLDERS[case]
  breaks(pathlib.Path(tiny_bert))
  with pytest.raises(MmjaxError) as e:
    pretrained.check_text_folder(tiny_bert)
  message = str(e.value)
  assert "\n" not in message and needle in message, message
  assert message.startswith(os.path.join(tiny_bert, file).rstrip(os.sep)), message


def test_a_broken_image_folder_is_one_line_naming_the_file(tmp_path):
  folder = save_tiny_vit(tmp_path / "vit", image_size=16, patch=8, hidden=8)
  hf_import.check_image_folder(folder)
  _truncate(tmp_path / "vit" / "model.safetensors")
  with pytest.raises(MmjaxError, match=r"vit/model.safetensors: not a readable"):
    hf_import.check_image_folder(folder)


@pytest.mark.parametrize("case", ["no_tokenizer_files", "truncated_weights",
                                  "config_missing_a_key"])
def test_training_on_a_broken_folder_stops_before_anything_is_made(case, tiny_bert, tmp_path):
  """Through the CLI: exit 2, one line, no workdir, no data work."""
  breaks, _, needle = BROKEN_TEXT_FOLDERS[case]
  breaks(pathlib.Path(tiny_bert))
  workdir = str(tmp_path / "w")
  argv = ["mmjax train", "--config", os.path.join(TESTS, "tiny_cli_config.py"),
          "--workdir", workdir, f"--config.model.text.init_from={tiny_bert}",
          f"--config.data.cache_dir={tmp_path / 'cache'}"]
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
    cli.train_main(argv)
  assert_refused(e.value.code, err.getvalue(), workdir, case)
  assert needle in err.getvalue()
  assert not (tmp_path / "cache").exists()   # No catalog generated first.


def test_features_on_a_broken_folder_stops_before_its_output(tiny_bert, tmp_path):
  breaks, _, needle = BROKEN_TEXT_FOLDERS["no_tokenizer_files"]
  breaks(pathlib.Path(tiny_bert))
  out = str(tmp_path / "features")
  err = io.StringIO()
  with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
    cli._COMMANDS["features"][1](["mmjax features", "--items", str(tmp_path / "items.tsv"),
                                  "--text_column", "title", "--text_model", tiny_bert,
                                  "--out", out])
  assert_refused(e.value.code, err.getvalue(), out, "features")
  assert needle in err.getvalue()


# --- by generation: mutated folder files --------------------------------------

FOLDER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "model.safetensors")


@pytest.fixture(scope="module")
def sound_bert(tmp_path_factory):
  return save_tiny_bert(tmp_path_factory.mktemp("sound") / "bert", ["red", "shirt"],
                        layers=1, hidden=8, heads=2, max_len=16)


def _mutate(data: bytes, how: str, at: float, byte: int) -> bytes:
  i = int(at * len(data))
  if how == "truncate":
    return data[:i]
  if how == "flip" and data:
    i = min(i, len(data) - 1)
    return data[:i] + bytes([byte]) + data[i + 1:]
  return bytes([byte]) * (i % 64)   # "replace": short junk.


@settings(max_examples=int(os.environ.get("MMJAX_FUZZ_EXAMPLES", "12")), deadline=None,
          database=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(FOLDER_FILES + ("none",)),
       how=st.sampled_from(["truncate", "flip", "replace", "delete"]),
       at=st.floats(0, 1), byte=st.integers(0, 255))
def test_a_mutated_folder_loads_or_is_one_line(sound_bert, tmp_path_factory, name, how, at, byte):
  """Whatever one file of the folder becomes, the check passes and the tower
  and tokenizer then load, or it is one MmjaxError line; never a traceback."""
  folder = str(tmp_path_factory.mktemp("mutated") / "bert")
  shutil.copytree(sound_bert, folder)
  if name != "none":
    file = os.path.join(folder, name)
    if how == "delete":
      os.remove(file)
    else:
      with open(file, "rb") as f:
        data = f.read()
      with open(file, "wb") as f:
        f.write(_mutate(data, how, at, byte))
  try:
    pretrained.check_text_folder(folder)
    TextTokenizer(folder, max_len=8)
    hf_import.load_text_encoder(folder)
  except MmjaxError as e:
    assert str(e) and "\n" not in str(e), str(e)


@pytest.fixture(scope="module")
def sound_vit(tmp_path_factory):
  return save_tiny_vit(tmp_path_factory.mktemp("sound") / "vit", image_size=16, patch=8,
                       hidden=8)


# The config.json keys each tower reads, and how it is checked and loaded.
TOWERS = {
    "text": (["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "hidden_act", "model_type", "position_embedding_type"],
             pretrained.check_text_folder, hf_import.load_text_encoder),
    "image": (["image_size", "patch_size", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size", "num_channels",
               "layer_norm_eps", "hidden_act", "model_type", "qkv_bias", "pooler_act"],
              hf_import.check_image_folder, hf_import.load_image_encoder),
}


@pytest.mark.parametrize("tower", list(TOWERS))
def test_a_config_json_value_loads_or_is_one_line(tower, request):
  """Whatever value one config.json key takes: the check passes and the
  tower loads, or it is one MmjaxError line."""
  keys, check, load = TOWERS[tower]
  sound = request.getfixturevalue("sound_bert" if tower == "text" else "sound_vit")
  factory = request.getfixturevalue("tmp_path_factory")

  @settings(max_examples=int(os.environ.get("MMJAX_FUZZ_EXAMPLES", "12")), deadline=None,
            database=None, suppress_health_check=list(HealthCheck))
  @given(key=st.sampled_from(keys),
         value=st.one_of(st.integers(-2, 40), st.floats(allow_nan=True),
                         st.text(max_size=6), st.none(), st.booleans(),
                         st.lists(st.integers(), max_size=2)))
  def loads_or_is_one_line(key, value):
    folder = str(factory.mktemp("config") / tower)
    shutil.copytree(sound, folder)
    _edit_config(**{key: value})(pathlib.Path(folder))
    try:
      check(folder)
      load(folder)
    except MmjaxError as e:
      assert str(e) and "\n" not in str(e), str(e)
  loads_or_is_one_line()
