"""When to retry: 503 and connection errors, idempotent calls only, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from qadapter.client.errors import ConnectionFailed, Overloaded, QAdapterClientError


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    backoff_s: float = 0.5  # the first wait when the server gives no Retry-After; doubles each time
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, error: QAdapterClientError, is_idempotent: bool) -> float | None:
        """Seconds to wait before retry `attempt + 1` after `error`, or None to raise it."""
        if not is_idempotent or attempt >= self.max_retries or not isinstance(error, Overloaded | ConnectionFailed):
            return None
        if isinstance(error, Overloaded) and error.retry_after is not None:
            return min(error.retry_after, self.max_wait_s)
        # Jitter: clients that failed together should not come back together.
        return min(self.backoff_s * 2.0**attempt, self.max_wait_s) * random.uniform(0.5, 1.0)
