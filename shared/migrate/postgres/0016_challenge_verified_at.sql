-- When a challenge's first factor was verified: the password's check, or
-- the identity provider's auth_time. A session a completed challenge
-- starts counts as re-authenticated from then, not from when the second
-- factor was answered, so the five minutes the posture allows sensitive
-- actions after a password was verified are five minutes from the
-- password. NULL (challenges made before this column): created_at.
ALTER TABLE mfa_challenges ADD COLUMN verified_at timestamptz;
