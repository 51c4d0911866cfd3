"""Every table, imported in one place so that Alembic sees the whole schema."""

from tidings.accounts.models import Account, Integration
from tidings.campaigns.models import Campaign, CampaignTrigger, CampaignVariant
from tidings.conversations.models import (
    Conversation,
    ConversationLabel,
    ConversationNote,
    InboundMessage,
    MediaFile,
    SavedReply,
)
from tidings.db import Base
from tidings.delivery.models import Message, PendingStatus
from tidings.profiles.models import CatalogueEntry, ConsentChange, Event, Profile
from tidings.segments.models import Segment
from tidings.templates.models import Template
from tidings.users.models import ApiKey, User, UserSession

__all__ = [
    "Account",
    "ApiKey",
    "Base",
    "Campaign",
    "CampaignTrigger",
    "CampaignVariant",
    "CatalogueEntry",
    "ConsentChange",
    "Conversation",
    "ConversationLabel",
    "ConversationNote",
    "Event",
    "InboundMessage",
    "Integration",
    "MediaFile",
    "Message",
    "PendingStatus",
    "Profile",
    "SavedReply",
    "Segment",
    "Template",
    "User",
    "UserSession",
]
