package audit

// StorableNumber is storableNumber, for the tests that check it against
// PostgreSQL itself.
var StorableNumber = storableNumber
