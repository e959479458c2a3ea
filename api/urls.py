from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import inbox, push, scheduled, views, webhooks

urlpatterns = [
    path("notify", views.NotifyView.as_view(), name="notify"),
    path("notify/batch", views.NotifyBatchView.as_view(), name="notify-batch"),
    path("channels/<str:channel>/history", views.HistoryView.as_view(), name="channel-history"),
    path("channels/<str:channel>/presence", views.PresenceView.as_view(), name="channel-presence"),
    path("tokens", views.TokenView.as_view(), name="tokens"),
    path("inbox", inbox.NotificationsView.as_view(), name="inbox"),
    path("inbox/counts", inbox.CountsView.as_view(), name="inbox-counts"),
    path("inbox/mark", inbox.MarkView.as_view(), name="inbox-mark"),
    path("inbox/preferences", inbox.PreferencesView.as_view(), name="inbox-preferences"),
    path("inbox/<str:notification_id>", inbox.NotificationView.as_view(), name="inbox-notification"),
    path("users/<str:user>/inbox", inbox.UserNotificationsView.as_view(), name="user-inbox"),
    path("users/<str:user>/inbox/counts", inbox.UserCountsView.as_view(), name="user-inbox-counts"),
    path("users/<str:user>/inbox/mark", inbox.UserMarkView.as_view(), name="user-inbox-mark"),
    path("users/<str:user>/inbox/preferences", inbox.UserPreferencesView.as_view(), name="user-inbox-preferences"),
    path(
        "users/<str:user>/inbox/<str:notification_id>",
        inbox.UserNotificationView.as_view(),
        name="user-inbox-notification",
    ),
    path("push/key", push.KeyView.as_view(), name="push-key"),
    path("push/subscriptions", push.SubscriptionsView.as_view(), name="push-subscriptions"),
    path("push/subscriptions/<int:subscription_id>", push.SubscriptionView.as_view(), name="push-subscription"),
    path("users/<str:user>/push/subscriptions", push.UserSubscriptionsView.as_view(), name="user-push-subscriptions"),
    path(
        "users/<str:user>/push/subscriptions/<int:subscription_id>",
        push.UserSubscriptionView.as_view(),
        name="user-push-subscription",
    ),
    path("webhooks", webhooks.EndpointsView.as_view(), name="webhooks"),
    path("webhooks/<int:endpoint_id>", webhooks.EndpointView.as_view(), name="webhook"),
    path("webhooks/<int:endpoint_id>/rotate", webhooks.RotateView.as_view(), name="webhook-rotate"),
    path("scheduled", scheduled.ScheduledView.as_view(), name="scheduled"),
    path("scheduled/<str:event_id>", scheduled.ScheduledEventView.as_view(), name="scheduled-event"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
