"""URL credentials are masked alike however long the text around them is."""

from __future__ import annotations

import random

from conveyor import redact


def test_url_credentials_are_masked_as_by_the_whole_pattern() -> None:
    rng = random.Random(7)
    whole = redact._URL_CREDS
    chars = "ab1+.-:/@ x9Z\n\t"
    for _ in range(20_000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
        assert redact._url_credentials(text) == whole.sub(redact._mask_credentials, text), text
    page = "<td>POST https://user:pw-x1@partner.example/orders: HTTP 422</td> amqp://u:p@h/ " * 50
    assert redact._url_credentials(page) == whole.sub(redact._mask_credentials, page)
    assert "pw-x1" not in redact._url_credentials(page)
