"""Django settings for notifier, read from the environment (12-factor).

Every setting has a safe default. With no REDIS_URL the service runs in its embedded mode
(SQLite, in-memory channel layer and history, Celery tasks run eagerly in-process), which is
for trying it on a laptop. Production sets REDIS_URL (and DATABASE_URL), and
NOTIFIER_REDIS_SENTINELS / NOTIFIER_REDIS_SENTINEL_MASTER to reach Redis through Sentinel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from realtime.conf import DEFAULTS, check_values, environment_overrides, parse_env

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(key: str, default: str) -> str:
    return os.environ.get(key, default)


def env_bool(key: str, default: bool) -> bool:
    raw = os.environ.get(key, "")
    return default if raw == "" else bool(parse_env(key, raw, default))


def env_int(key: str, default: int) -> int:
    raw = os.environ.get(key, "")
    return default if raw == "" else int(parse_env(key, raw, default))


def env_list(key: str, default: list[str]) -> list[str]:
    raw = os.environ.get(key, "")
    return default if raw.strip() == "" else list(parse_env(key, raw, default))


def _dev_secret_key(path: Path) -> str:
    """The embedded mode's key when DJANGO_SECRET_KEY is unset: random, made once per checkout.

    A key written in the source would let anyone who reads it sign connection tokens and
    cookies for a trial server that was made reachable from other machines. The file is
    created with a hard link so concurrent processes all end up reading the same key.
    """
    if not path.exists():
        fresh = path.with_name(f"{path.name}.{os.getpid()}")
        fresh.write_text(secrets.token_urlsafe(50))
        fresh.chmod(0o600)
        try:
            os.link(fresh, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            fresh.unlink()
    return path.read_text().strip()


DEBUG = env_bool("DJANGO_DEBUG", False)
REDIS_URL = env_str("REDIS_URL", "")
EMBEDDED = REDIS_URL == ""
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not EMBEDDED:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when REDIS_URL is set (production mode)")
    SECRET_KEY = _dev_secret_key(BASE_DIR / ".dev-secret-key")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

# Behind nginx terminating TLS (docs/deploy.md): DJANGO_HTTPS=1 marks the admin's session and
# CSRF cookies Secure and trusts nginx's X-Forwarded-Proto (the site sets it, and HSTS). Off by
# default, so plain-HTTP setups (make run, make run-prod, the tests) can still log in.
if env_bool("DJANGO_HTTPS", False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # nginx redirects HTTP to HTTPS and sends HSTS (deploy/nginx/notifier.conf), not Django.
    SILENCED_SYSTEM_CHECKS = ["security.W004", "security.W008"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "realtime",
    "api",
    "worker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "notifier.urls"
ASGI_APPLICATION = "notifier.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "notifier" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# PostgreSQL connections come from a pool per process (psycopg_pool, Django's "pool" option): under
# ASGI every request runs in a thread of its own, so Django's persistent connections
# (CONN_MAX_AGE) would leave one open connection per finished thread until the garbage collector
# found it, and a burst of requests ran the server out of connections ("too many clients"). A new
# connection costs milliseconds, more than the inbox queries themselves, so they are reused.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django refuses both
    # CONN_HEALTH_CHECKS (kept on) makes the pool check a connection before handing it out.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN_SIZE", 1),
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 10),
        "max_idle": 60,  # seconds an idle connection above min_size is kept
        "timeout": env_int("DATABASE_POOL_TIMEOUT_SECS", 10),  # then 503 unavailable
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
# Serve /static/ (the JS client, admin assets) from the ASGI process itself. On by default in the
# embedded mode and with DEBUG; behind a proxy, run collectstatic and let the proxy serve them.
SERVE_STATIC = env_bool("NOTIFIER_SERVE_STATIC", EMBEDDED or DEBUG)
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# The browser client (clients/js/notifier.js and its classic build) at /static/notifier.js.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "notifier.staticfiles.JsClientFinder",
]

# Redis: one pool configuration for the channel layer, history and Celery. The timeouts make a
# dead Redis fail a publish quickly (503) instead of hanging the request.
REDIS_CONNECT_TIMEOUT_SECS = env_int("NOTIFIER_REDIS_CONNECT_TIMEOUT_SECS", DEFAULTS["REDIS_CONNECT_TIMEOUT_SECS"])
REDIS_SOCKET_TIMEOUT_SECS = env_int("NOTIFIER_REDIS_SOCKET_TIMEOUT_SECS", DEFAULTS["REDIS_SOCKET_TIMEOUT_SECS"])


def _node_address(item: str, default_port: str = "6379", variable: str = "NOTIFIER_REDIS_CLUSTER") -> tuple[str, int]:
    """`host:port`, `host` (the default port) or `[v6]:port`."""
    host, port = item, default_port
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"{variable}: {item!r} is not host:port")
    return host, int(port)


def _redis_sentinel() -> dict[str, Any] | None:
    """NOTIFIER_REDIS_SENTINELS and NOTIFIER_REDIS_SENTINEL_MASTER, parsed once for every Redis user.

    The master's address comes from the Sentinels; REDIS_URL (still required: it is what turns
    production mode on) gives only the master's db number, username and password, and its host
    and port are ignored.
    """
    sentinels = [
        _node_address(item, "26379", "NOTIFIER_REDIS_SENTINELS") for item in env_list("NOTIFIER_REDIS_SENTINELS", [])
    ]
    if not sentinels:
        return None
    master_name = env_str("NOTIFIER_REDIS_SENTINEL_MASTER", "")
    if not master_name:
        raise ImproperlyConfigured(
            "NOTIFIER_REDIS_SENTINEL_MASTER must name the master when NOTIFIER_REDIS_SENTINELS is set"
        )
    if EMBEDDED:
        raise ImproperlyConfigured(
            "REDIS_URL must be set with NOTIFIER_REDIS_SENTINELS, e.g. redis://:password@mymaster/0: "
            "its db number and password apply to the master, its host and port are ignored"
        )
    url = urlsplit(REDIS_URL)
    if url.scheme != "redis":
        raise ImproperlyConfigured(f"REDIS_URL must be redis://… with NOTIFIER_REDIS_SENTINELS (not {url.scheme}://)")
    db = url.path.strip("/") or "0"
    if not db.isdigit():
        raise ImproperlyConfigured(f"REDIS_URL: the db number {db!r} is not an integer")
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_SECS,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECS,
    }
    if sentinel_password := env_str("NOTIFIER_REDIS_SENTINEL_PASSWORD", ""):
        sentinel_kwargs["password"] = sentinel_password
    master_kwargs: dict[str, Any] = {"db": int(db)}
    if url.username:
        master_kwargs["username"] = unquote(url.username)
    if url.password:
        master_kwargs["password"] = unquote(url.password)
    return {
        "sentinels": sentinels,
        "master_name": master_name,
        "sentinel_kwargs": sentinel_kwargs,  # for connections to the Sentinels
        "master_kwargs": master_kwargs,  # for connections to the master
    }


# The one place that says whether Redis is reached through Sentinel: the channel layer, the
# cache, Celery (below) and realtime.redis.get_redis all build their connections from it.
REDIS_SENTINEL = _redis_sentinel()


def _redis_cluster() -> list[tuple[str, int]] | None:
    """NOTIFIER_REDIS_CLUSTER: the seed nodes of a Redis Cluster (host:port, comma-separated).

    REDIS_URL is still required (it turns production mode on) and gives the nodes' username,
    password and TLS (`rediss://`); its host, port and db are ignored (a cluster has db 0 only).
    """
    seeds = [_node_address(item) for item in env_list("NOTIFIER_REDIS_CLUSTER", [])]
    if not seeds:
        return None
    if EMBEDDED:
        raise ImproperlyConfigured(
            "REDIS_URL must be set with NOTIFIER_REDIS_CLUSTER, e.g. redis://:password@cluster/0: "
            "its password and scheme (rediss:// for TLS) apply to every node, its host and port are ignored"
        )
    if REDIS_SENTINEL is not None:
        raise ImproperlyConfigured("NOTIFIER_REDIS_CLUSTER and NOTIFIER_REDIS_SENTINELS exclude each other")
    if not env_str("CELERY_BROKER_URL", ""):
        raise ImproperlyConfigured(
            "CELERY_BROKER_URL must be set with NOTIFIER_REDIS_CLUSTER: Celery cannot use a Redis Cluster. "
            "Use RabbitMQ (amqp://guest:guest@localhost:5672//) or a plain Redis of its own (redis://…)"
        )
    return seeds


# Redis Cluster's seed nodes, or None: read by realtime.redis.get_redis and the channel layer.
REDIS_CLUSTER = _redis_cluster()


def _celery_sentinel_url(sentinel: dict[str, Any]) -> str:
    """Kombu's form: `sentinel://:password@host:port/db;sentinel://…` (credentials are the master's)."""
    kwargs = sentinel["master_kwargs"]
    auth = ""
    if "username" in kwargs or "password" in kwargs:
        auth = f"{quote(kwargs.get('username', ''), safe='')}:{quote(kwargs.get('password', ''), safe='')}@"
    return ";".join(
        f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{kwargs['db']}"
        for host, port in sentinel["sentinels"]
    )


if EMBEDDED:
    CHANNEL_LAYERS = {
        "default": {
            # The hub is one channel per process, so capacity is the hub's backlog, not a
            # per-socket queue: keep it far above a burst.
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 100_000},
        }
    }
elif REDIS_CLUSTER is not None:
    CHANNEL_LAYERS = {
        "default": {
            # Sharded pub/sub (SSUBSCRIBE / SPUBLISH): a channel's messages go only to the shard
            # that holds its history, and from it only to the processes subscribed (realtime/broker.py).
            "BACKEND": "realtime.broker.ShardedLayer",
            "CONFIG": {"prefix": env_str("NOTIFIER_LAYER_PREFIX", "notifier")},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            # Pub/sub layer: one PUBLISH per event however many processes listen, no
            # per-member queues that drop silently when full. It is at-most-once; the hub
            # fills any gap from history (see docs/delivery.md, "Why the pub/sub channel layer"). channels-redis's,
            # with a reader that reconnects fast after a failover (realtime/broker.py).
            "BACKEND": "realtime.broker.PubSubLayer",
            "CONFIG": {
                "history_redis": True,  # history's Redis: its append script publishes (realtime/broker.py)
                "hosts": [
                    {
                        # channels-redis asks the Sentinels for the master given these keys.
                        **(
                            {"address": REDIS_URL}
                            if REDIS_SENTINEL is None
                            else {
                                "sentinels": REDIS_SENTINEL["sentinels"],
                                "master_name": REDIS_SENTINEL["master_name"],
                                "sentinel_kwargs": REDIS_SENTINEL["sentinel_kwargs"],
                                **REDIS_SENTINEL["master_kwargs"],
                            }
                        ),
                        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_SECS,
                        "socket_keepalive": True,
                        "health_check_interval": 10,
                    }
                ],
                "prefix": env_str("NOTIFIER_LAYER_PREFIX", "notifier"),
            },
        }
    }

# Django's cache (for the project's own use; the publish rate is counted in api/rates.py) is shared by every process.
# Django's RedisCache cannot use a cluster: there, as in the embedded mode, the cache is per process.
_cache: dict[str, Any] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
if not EMBEDDED and REDIS_CLUSTER is None:
    _cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "notifier-cache",
    }
    if REDIS_SENTINEL is not None:
        # This pool ignores LOCATION's host and port and asks the Sentinels for the master.
        _cache["OPTIONS"] = {"pool_class": "realtime.redis.SentinelCachePool"}
CACHES = {"default": _cache}

SPECTACULAR_SETTINGS = {
    "TITLE": "notifier API",
    "DESCRIPTION": "Publish real-time events, read channel history and presence, mint connection tokens.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Celery: Redis is the broker, unless CELERY_BROKER_URL names another (amqp://… for RabbitMQ, the
# broker for a Redis Cluster deployment: kombu cannot use a cluster). Embedded mode runs tasks
# eagerly in-process.
_CELERY_BROKER_OVERRIDE = env_str("CELERY_BROKER_URL", "")
_CELERY_ON_REDIS = not _CELERY_BROKER_OVERRIDE
CELERY_BROKER_URL = _CELERY_BROKER_OVERRIDE or (
    (REDIS_URL or "memory://") if REDIS_SENTINEL is None else _celery_sentinel_url(REDIS_SENTINEL)
)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Kombu's transport options as JSON, e.g. '{"visibility_timeout": 3600}' for Redis.
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(env_str("CELERY_BROKER_TRANSPORT_OPTIONS", "{}"))
if REDIS_SENTINEL is not None and _CELERY_ON_REDIS:
    _celery_sentinel_options = {
        "master_name": REDIS_SENTINEL["master_name"],
        "sentinel_kwargs": REDIS_SENTINEL["sentinel_kwargs"],
    }
    CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, **_celery_sentinel_options}
    # Used only if CELERY_RESULT_BACKEND is a sentinel:// URL (docs/deploy.md).
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = _celery_sentinel_options

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}


def _derived_secret(purpose: str, key: str) -> str:
    return hmac.new(key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _namespaces() -> dict[str, dict[str, object]]:
    raw = os.environ.get("NOTIFIER_NAMESPACES", "")
    if raw:
        parsed: dict[str, dict[str, object]] = parse_env("NOTIFIER_NAMESPACES", raw, {})
        return parsed
    # The trial mode lets chat rooms publish from the browser (the /demo/chat/ page);
    # production turns client publishing on only where NOTIFIER_NAMESPACES says so.
    return {"chat": {"client_publish": True}} if EMBEDDED else {}


# Our own knobs, read through realtime.conf.notifier_settings (unknown keys raise). Their
# defaults are in realtime/conf.py; here only what the environment sets (NOTIFIER_<NAME>).
NOTIFIER: dict[str, Any] = {
    **environment_overrides(os.environ),
    "REDIS_URL": REDIS_URL,
    "JWT_SECRET": env_str("NOTIFIER_JWT_SECRET", "") or _derived_secret("notifier-jwt", SECRET_KEY),
    "NAMESPACES": _namespaces(),
}
check_values({**DEFAULTS, **NOTIFIER})
MAX_PAYLOAD_BYTES: int = NOTIFIER.get("MAX_PAYLOAD_BYTES", DEFAULTS["MAX_PAYLOAD_BYTES"])
MAX_BATCH_EVENTS: int = DEFAULTS["MAX_BATCH_EVENTS"]

# `celery -A notifier beat` (or a worker with -B) runs these: the sweep queues again the
# pushes and webhooks whose task a killed worker took with it (worker/tasks.py).
# The dispatch publishes the scheduled events and digests that are due (a tick that waited
# longer than a few ticks is dropped: a later one does its work).
_DISPATCH_SECS = float(NOTIFIER.get("DISPATCH_SECS", DEFAULTS["DISPATCH_SECS"]))
CELERY_BEAT_SCHEDULE = {
    "sweep": {"task": "notifier.sweep", "schedule": float(NOTIFIER.get("SWEEP_SECS", DEFAULTS["SWEEP_SECS"]))},
    "dispatch": {
        "task": "notifier.dispatch",
        "schedule": _DISPATCH_SECS,
        "options": {"expires": max(5.0, 4 * _DISPATCH_SECS)},
    },
}

# A full batch (MAX_BATCH_EVENTS events at MAX_PAYLOAD_BYTES each, plus their envelopes) fits;
# anything larger is refused with 413 before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BATCH_EVENTS * (MAX_PAYLOAD_BYTES + 4096)

LOG_FORMAT = env_str("NOTIFIER_LOG_FORMAT", "plain")  # "json": one JSON object per line
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"NOTIFIER_LOG_FORMAT={LOG_FORMAT!r}: use plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "realtime.logs.RedactSecrets"},
        "no_accepted_sockets": {"()": "realtime.logs.DropAcceptedSockets"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "realtime.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env_str("NOTIFIER_LOG_LEVEL", "INFO")},
    "loggers": {
        # An access-log line per request/connection costs CPU on the hot path (DESIGN §8).
        "daphne.server": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
        # Uvicorn's own lines (it logs each WebSocket's URL, query string included) go through
        # the same formatter and redaction as ours.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO", "filters": ["no_accepted_sockets"]},
        # Access lines cost CPU per request and carry query strings: off, whatever the flags say.
        "uvicorn.access": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
