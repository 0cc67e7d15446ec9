"""The panel's "Try" tab: speak, transcribe, rerank or draw with a running model.

The model dropdown lists running models that do any of these; the inputs under
it follow the model's ability.  Work runs in the panel's background threads
(never blocking the kernel) and shows in widgets: an audio player, the text,
a ranking table, an image.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from xnb.protocol import ModelStatus

__all__ = ["TryBox", "ABILITIES"]

#: What the tab can try, in the order a model's abilities are looked up.
ABILITIES = ("speech", "transcribe", "rerank", "image")


class TryBox(w.VBox):
    """Try a speech, transcription, rerank or image model."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self.abilities: dict[str, str] = {}
        self.model = w.Dropdown(options=[], description="Model")
        self.model.observe(lambda _: self._show(), names="value")
        # speech
        self.text = w.Textarea(placeholder="Text to speak", layout=w.Layout(width="80%", height="60px"))
        self.voice = w.Text(description="Voice", placeholder="default")
        # transcribe
        self.upload = w.FileUpload(accept="audio/*,.wav,.mp3,.flac,.ogg,.m4a,.webm", multiple=False)
        # rerank
        self.query = w.Text(description="Query", layout=w.Layout(width="80%"))
        self.docs = w.Textarea(placeholder="one document per line", layout=w.Layout(width="80%", height="100px"))
        # image
        self.prompt = w.Text(description="Prompt", layout=w.Layout(width="80%"))
        self.size = w.Text(description="Size", placeholder="e.g. 512x512")
        self.seed = w.Text(description="Seed", placeholder="random")
        self.run = w.Button(description="Run", button_style="primary", icon="play")
        self.run.add_class("xnb-try-run")
        self.run.on_click(lambda _: self.panel.background(self.try_model))
        self.inputs = w.VBox()
        self.result = w.HTML()
        self.result.add_class("xnb-try-result")
        self.audio = w.Audio(autoplay=False, layout=w.Layout(display="none"))
        self.image = w.Image(format="png", layout=w.Layout(display="none"))
        super().__init__([self.model, self.inputs, self.run, self.result, self.audio, self.image])
        self.add_class("xnb-try")
        self._show()

    def update_models(self, records: list[dict[str, Any]]) -> None:
        abilities = {}
        for r in records:
            found = next((a for a in ABILITIES if a in r["spec"]["abilities"]), None)
            if ModelStatus(r["status"]).serving and found:
                abilities[r["uid"]] = found
        if abilities != self.abilities:
            self.abilities = abilities
            current = self.model.value
            self.model.options = list(abilities)
            if current in abilities:
                self.model.value = current
            self._show()

    def _show(self) -> None:
        ability = self.abilities.get(self.model.value or "")
        self.inputs.children = {
            "speech": [self.text, self.voice],
            "transcribe": [self.upload],
            "rerank": [self.query, self.docs],
            "image": [self.prompt, w.HBox([self.size, self.seed])],
        }.get(ability or "", [w.HTML("<i>launch a speech, transcription, rerank or image model to try it "
                                     "(Launch tab)</i>")])
        self.run.description = {"speech": "Speak", "transcribe": "Transcribe", "rerank": "Rank",
                                "image": "Draw"}.get(ability or "", "Run")

    def try_model(self) -> Any:
        """Run the selected model on the inputs (in a background thread); returns its result."""
        uid = self.model.value
        ability = self.abilities.get(uid or "")
        if not uid or not ability:
            self.panel.set_status("choose a running speech, transcription, rerank or image model", error=True)
            return None
        model = self.panel.client.get(uid)
        self.run.disabled = True
        self.audio.layout.display = self.image.layout.display = "none"
        try:
            if ability == "speech":
                audio = model.speak(self.text.value.strip(), voice=self.voice.value.strip() or None, display=False)
                self.audio.value = audio
                self.audio.layout.display = ""
                self.result.value = f"{len(audio)} bytes of WAV"
                return audio
            if ability == "transcribe":
                files = list(self.upload.value)
                if not files:
                    self.panel.set_status("choose an audio file to transcribe", error=True)
                    return None
                text = model.transcribe(bytes(files[0]["content"]))
                self.result.value = f"<div style='white-space:pre-wrap'>{html.escape(text)}</div>"
                return text
            if ability == "rerank":
                docs = [d for d in self.docs.value.splitlines() if d.strip()]
                ranked = model.rerank(self.query.value, docs)
                rows = "".join(f"<tr><td>{r['relevance_score']:.4f}</td><td>{html.escape(r['document']['text'])}</td></tr>"
                               for r in ranked)
                self.result.value = f"<table><tr><th>score</th><th>document</th></tr>{rows}</table>"
                return ranked
            params: dict[str, Any] = {"size": self.size.value.strip() or None}
            if self.seed.value.strip():
                params["seed"] = int(self.seed.value)
            picture = model.image(self.prompt.value, **params)
            import io

            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            self.image.value = buf.getvalue()
            self.image.layout.display = ""
            self.result.value = f"{picture.size[0]}x{picture.size[1]} image"
            return picture
        finally:
            self.run.disabled = False
