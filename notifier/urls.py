from django.contrib import admin
from django.urls import include, path

from api.views import HealthView

urlpatterns = [
    path("api/", include("api.urls")),
    path("healthz", HealthView.as_view(), name="healthz"),
    path("admin/", admin.site.urls),
]

handler400 = "api.exceptions.json_400"
handler404 = "api.exceptions.json_404"
handler500 = "api.exceptions.json_500"
