from django.contrib import admin
from django.urls import include, path

from api.health import metrics_view, readyz
from api.views import HealthView
from notifier import demo

urlpatterns = [
    path("api/", include("api.urls")),
    path("healthz", HealthView.as_view(), name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include(demo.urlpatterns)),  # /demo/ and /demo/chat/<room>/
]

handler400 = "api.exceptions.json_400"
handler404 = "api.exceptions.json_404"
handler500 = "api.exceptions.json_500"
