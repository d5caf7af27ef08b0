"""The chat messages a record's prompt is built from, by template name (``data.prompt_template``).

- ``project``: the system turn ``data.system_prompt``, the optional demonstration exchange
  (``data.example_question`` / ``example_answer``), then a user turn with the images and the problem.
- ``official``: what MediX-R1's official trainer sends: no system turn, one user turn rendered from
  its ``medical_format.jinja`` (https://github.com/mbzuai-oryx/MediX-R1/blob/94fd0184b54d5e77abf909aef87aa6ada1310099/training/examples/format_prompt/medical_format.jinja),
  the instructions, ``Question:``, a newline, the image slot, then the problem with surrounding
  whitespace trimmed. The official loader strips the template file before rendering, so the
  rendered text ends with the problem.

Images sit at ``<image>`` markers: the official template has one after ``Question:``, the project
template none (images go before the text); a problem may carry its own markers (one per image).
A text-only record gets no image slot (the official template writes one regardless; an image slot
without an image is not something a Qwen-VL model can be given here).
"""
from __future__ import annotations

import re

IMAGE_MARKER = "<image>"
_MARKER_RE = re.compile(re.escape(IMAGE_MARKER))

# The text of the official template before its image slot (a training input: reproduced as is,
# including its trailing space after "Question:" and the missing period after "capabilities").
OFFICIAL_INSTRUCTIONS = (
    "You are a Medical AI Assistant with advanced reasoning capabilities\n"
    "Your task:\n"
    "1. First output the image modality tag from this set:\n"
    "   <X_RAY>, <MICROSCOPY>, <CLINICAL_PHOTOGRAPHY>, <CT_SCAN>, <GRAPHICS>, \n"
    "   <ANGIOGRAPHY>, <PET_SCAN>, <ULTRASOUND>, <MRI_SCAN>, <FUNDUS_PHOTOGRAPHY>, \n"
    "   <OCT_SCAN>, <ENDOSCOPY>, <MAMMOGRAPHY>, <FLUOROSCOPY>, <OTHER>, <SPECT>\n"
    "   (Only output the tag, nothing else.)\n"
    "2. Then output the thinking and medical reasoning process in <thinking>...</thinking>tags.\n"
    "3. Finally, provide the correct answer inside <answer>...</answer> tags.\n"
    "4. Do not include any extra information or text outside of these tags.\n"
    "Question: \n"
)


def content_with_images(text: str, n_images: int, record_id="?"):
    """A user turn's content: the plain text without images, else {"type": "image"} / {"type": "text"}
    parts with one image at each ``<image>`` marker of ``text`` (every image before the text when it
    has none). A marker count other than ``n_images`` is a ValueError naming the record."""
    if not isinstance(text, str):
        raise TypeError(f"record {record_id!r}: problem must be a str, got {type(text).__name__}")
    if not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images must be an int >= 0, got {n_images!r}")
    markers = len(_MARKER_RE.findall(text))
    if not markers:
        if not n_images:
            return text
        return [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    if markers != n_images:
        raise ValueError(f"record {record_id!r}: the prompt has {markers} {IMAGE_MARKER} marker(s) but the record "
                         f"has {n_images} image(s); make them match (one marker per image) or remove the markers")
    content = []
    for k, piece in enumerate(_MARKER_RE.split(text)):
        if k:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def project_messages(problem: str, n_images: int, data, record_id="?") -> list[dict]:
    demo = []
    if data.example_question and data.example_answer:
        demo = [{"role": "user", "content": data.example_question},
                {"role": "assistant", "content": data.example_answer}]
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    return [*system, *demo, {"role": "user", "content": content_with_images(problem, n_images, record_id)}]


def official_messages(problem: str, n_images: int, data, record_id="?") -> list[dict]:
    problem = problem.strip()
    if not n_images:
        text = OFFICIAL_INSTRUCTIONS + problem
    elif IMAGE_MARKER in problem:  # the template's slot plus the problem's own markers, one image each
        text = OFFICIAL_INSTRUCTIONS + IMAGE_MARKER + problem
    else:  # every image of the record in the template's slot
        text = OFFICIAL_INSTRUCTIONS + IMAGE_MARKER * n_images + problem
    return [{"role": "user", "content": content_with_images(text, n_images, record_id)}]


def official_filter_messages(problem: str) -> list[dict]:
    """The user turn the official dataset measures in its overlong filter (``_build_messages`` in
    training/verl/utils/dataset.py): the rendered template split at every ``<image>`` (its own slot
    and any in the problem) into image and text parts, whatever images the record has: the image
    column exists in every row of the official data, so even a text-only record gets the slot."""
    content = []
    for k, piece in enumerate(_MARKER_RE.split(OFFICIAL_INSTRUCTIONS + IMAGE_MARKER + problem.strip())):
        if k:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return [{"role": "user", "content": content}]


# name -> messages(problem, n_images, data_section, record_id)
TEMPLATES = {"project": project_messages, "official": official_messages}
