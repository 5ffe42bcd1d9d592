"""A gs:// file system on this machine: gcp-storage-emulator on a loopback
port, with gcsfs (epath, fsspec) and TensorStore (Orbax's arrays) pointed
at it.

`remote_workdir()` starts the emulator once per process, sets the
environment (inherited by subprocesses, e.g. a CLI run) and returns a fresh
`gs://` workdir URL. `missing()` names what is not installed, for a skip.
"""

import contextlib
import importlib.util
import os
import socket
import tempfile
import threading
import uuid
from http import HTTPStatus

BUCKET = "mmjax-test"
_PACKAGES = ("gcp_storage_emulator", "gcsfs", "google.cloud.storage")
_lock = threading.Lock()
_server = None


def missing() -> str | None:
  """Why the emulator cannot run here (a skip reason), or None."""
  for name in _PACKAGES:
    try:
      found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
      found = False
    if not found:
      return (f"{name} is not installed (pip install gcp-storage-emulator gcsfs "
              "google-cloud-storage)")
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _environment(url: str) -> dict:
  return {
      # gcsfs and google-cloud-storage: the endpoint, anonymous access.
      "STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon",
      # gcsfs's zonal/HNS bucket probe speaks gRPC over TLS, which the
      # emulator does not: each bucket's probe would wait for its timeout.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      # TensorStore's gcs driver (Orbax's arrays): endpoint and a fixed token.
      "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
      # No credential lookup may reach a metadata server off this machine.
      "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9",
      "GCE_METADATA_IP": "127.0.0.1:9", "NO_GCE_CHECK": "True",
      "GOOGLE_CLOUD_PROJECT": "test",
      "CLOUDSDK_CONFIG": tempfile.mkdtemp(prefix="mmjax_gcloud_"),
  }


def _add_move_to(server_module, objects) -> None:
  """The emulator lacks GCS's moveTo (which gcsfs renames with): it answers
  501, which gcsfs retries with backoff before it copies instead."""
  def move(request, response, storage, *args, **kwargs):
    params = request.params   # Parsed once, then cached: ours to extend.
    params["dest_bucket_name"] = params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == HTTPStatus.OK:
      objects._delete(storage, params["bucket_name"], params["object_id"])

  p = server_module.settings.API_ENDPOINT
  route = (rf"^{p}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
           rf"(?P<dest_object_id>.*[^/]+)$", {server_module.POST: move})
  if route[0] not in [r for r, _ in server_module.HANDLERS]:
    server_module.HANDLERS = (route,) + tuple(server_module.HANDLERS)


def _add_generation_headers(server_module, objects) -> None:
  """GCS names an object's generation in a download's x-goog-generation
  header, and TensorStore (OCDBT's manifest) conditions its next reads on
  it; the emulator sends none, which TensorStore calls malformed."""
  download = objects.download
  if getattr(download, "with_generation", False):
    return

  def with_generation(request, response, storage, *args, **kwargs):
    params = request.params
    with contextlib.suppress(Exception):   # Missing: download answers 404.
      obj = storage.get_file_obj(params["bucket_name"], params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])
    download(request, response, storage, *args, **kwargs)

  with_generation.with_generation = True
  objects.download = with_generation   # objects.get calls it by name.
  server_module.HANDLERS = tuple(
      (regex, {m: with_generation if h is download else h
               for m, h in handlers.items()})
      for regex, handlers in server_module.HANDLERS)


def _start() -> str:
  global _server
  from gcp_storage_emulator import server as server_module
  from gcp_storage_emulator.handlers import objects
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  _add_move_to(server_module, objects)
  _add_generation_headers(server_module, objects)
  _server = server_module.create_server("127.0.0.1", port, in_memory=True,
                                        default_bucket=BUCKET)
  _server._api.daemon = True   # Its thread must not keep a finished process alive.
  _server.start()
  os.environ.update(_environment(url))
  import fsspec
  # fsspec read FSSPEC_GCS_* when it was imported: set this process's too.
  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {})["token"] = "anon"
  import gcsfs
  gcsfs.GCSFileSystem.clear_instance_cache()
  return url


def remote_workdir() -> str:
  """A fresh, empty gs:// workdir on the emulator (started on first use)."""
  with _lock:
    if _server is None:
      _start()
  return f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}"
