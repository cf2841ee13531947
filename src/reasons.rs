//! The reasons the relay counts by: why an attempt failed, why a delivery was
//! dead-lettered, why an alert was not forwarded. The ground floor: storage,
//! metrics, routing and delivery all speak these words, and none of them owns
//! them.

/// An enum of reasons with its label values, in one place: `ALL` (in
/// declaration order, which metric handles index by) and `as_str`.
macro_rules! reasons {
    ($(#[$meta:meta])* pub enum $name:ident { $($variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            /// The metric label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

reasons! {
    /// Why an HTTP attempt failed (label `reason` of `notification_requests_failed_total`).
    pub enum FailureReason {
        ServerError => "serverError",
        ClientError => "clientError",
        AuthError => "authError",
        RateLimited => "rateLimited",
        Timeout => "timeout",
        Connection => "connection",
    }
}

reasons! {
    /// Why a delivery was dead-lettered (label `reason` of `notifications_failed_total`).
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub enum DeadReason {
        ClientError => "clientError",
        AuthError => "authError",
        Expired => "expired",
        TemplateError => "templateError",
    }
}

reasons! {
    /// Why an alert did not reach a receiver (label `reason` of `alerts_filtered_total`).
    pub enum FilterReason {
        Conditions => "conditions",
        Resolved => "resolved",
        Disabled => "disabled",
        MaxAlerts => "max_alerts",
    }
}

impl FailureReason {
    /// The dead-letter reason of a permanent failure.
    pub fn dead_reason(self) -> DeadReason {
        match self {
            FailureReason::AuthError => DeadReason::AuthError,
            _ => DeadReason::ClientError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_contract_names_in_order() {
        assert_eq!(FilterReason::ALL.map(FilterReason::as_str), ["conditions", "resolved", "disabled", "max_alerts"]);
        assert_eq!(DeadReason::ALL.map(DeadReason::as_str), ["clientError", "authError", "expired", "templateError"]);
        assert_eq!(
            FailureReason::ALL.map(FailureReason::as_str),
            ["serverError", "clientError", "authError", "rateLimited", "timeout", "connection"]
        );
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        // Stored in the spool by this spelling.
        assert_eq!(serde_json::to_string(&DeadReason::ClientError).unwrap(), "\"clientError\"");
    }
}
